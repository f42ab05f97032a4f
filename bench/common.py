"""What every bench script shares: the machine header, load metering, tables, a real server.

Scripts print Markdown: a header (machine, versions, load while measuring, the command) and one
table per measurement, so ``bench/README.md`` can quote them verbatim. Progress goes to stderr.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import shlex
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped, unused-ignore]

# The tests' support code (real server process, free ports, Chromium, PostgreSQL) is ours too:
# the repository root on the path makes ``tests.support`` importable from a bench script.
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
from tests.support.ports import free_port
from tests.support.serve import ServeProcess

__all__ = ["DATA_DIR", "LoadMeter", "ServerProcess", "command_line", "fill_points", "fmt",
           "free_port", "header", "note", "percentile", "table"]

BENCH_DIR = Path(__file__).resolve().parent
DATA_DIR = BENCH_DIR / ".data"  # cached inputs (big SQLite files) and profiles; gitignored
TOKEN = "bench-ingest-token"


def note(*parts: object) -> None:
    """Progress for the person watching (stderr, so stdout stays a clean report)."""
    print(*parts, file=sys.stderr, flush=True)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linearly interpolated like numpy's default."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def fmt(value: float, digits: int = 2) -> str:
    """A number for a table cell; NaN shows as an em dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:,.{digits}f}"


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def command_line() -> str:
    """How this script was started, for the report's "rerun with" line."""
    script = Path(sys.argv[0]).resolve()
    try:
        shown = str(script.relative_to(BENCH_DIR.parent))
    except ValueError:
        shown = str(script)
    return shlex.join([".venv/bin/python", shown, *sys.argv[1:]])


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> str:
    """One line naming the machine and the interpreter."""
    ram = psutil.virtual_memory().total / 2**30
    return (f"{_cpu_model()}, {os.cpu_count()} cores, {ram:.0f} GiB RAM, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}")


class LoadMeter:
    """How busy the machine was with *other* work while we measured.

    ``os.getloadavg()`` counts our own processes too, so this also reports the CPU time spent
    by everything else: all busy CPU time (``/proc/stat``) minus this process tree's. The tree
    is sampled every 0.25 s from a thread, so descendants that exit before the end (servers,
    browser renderers of closed pages) still count as ours, up to their last sample.
    """

    def __init__(self) -> None:
        self.load_start = os.getloadavg()
        self._wall = time.monotonic()
        self._busy = _machine_busy_s()
        self._seen: dict[tuple[int, float], float] = {}  # (pid, started) -> CPU s last seen
        self._lock = threading.Lock()
        self._sample()
        self._start_own = self._own()
        self._stop = threading.Event()
        threading.Thread(target=self._watch, name="load-meter", daemon=True).start()

    def _watch(self) -> None:
        while not self._stop.wait(0.25):
            self._sample()

    def _sample(self) -> None:
        for proc in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):  # it may exit between listing and reading
                cpu = float(sum(proc.cpu_times()[:2]))
                with self._lock:
                    self._seen[(proc.pid, proc.create_time())] = cpu

    def _own(self) -> float:
        with self._lock:
            descendants = sum(self._seen.values())
        return float(sum(psutil.Process().cpu_times()[:2])) + descendants

    def summary(self) -> str:
        """Load averages at start and end, and the other processes' mean CPU use in cores."""
        self._sample()
        wall = time.monotonic() - self._wall
        busy = _machine_busy_s() - self._busy
        own = self._own() - self._start_own
        foreign = max(0.0, busy - own) / wall if wall > 0 else math.nan
        start, end = self.load_start, os.getloadavg()
        return (f"load average (1/5/15 min) at start {start[0]:.2f}/{start[1]:.2f}/"
                f"{start[2]:.2f}, at end {end[0]:.2f}/{end[1]:.2f}/{end[2]:.2f}; other "
                f"processes used {foreign:.2f} of {os.cpu_count()} cores on average "
                f"over {wall:.0f} s")


def _machine_busy_s() -> float:
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    busy = sum(times) - idle - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    return float(busy)


def header(title: str, meter: LoadMeter, *, versions: dict[str, str] | None = None,
           extra: Sequence[str] = ()) -> str:
    """The Markdown header of one report: what ran where, under which load."""
    lines = [f"## {title}", "", f"- command: `{command_line()}`", f"- machine: {machine()}",
             f"- {meter.summary()}"]
    if versions:
        lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    lines += [f"- {line}" for line in extra]
    return "\n".join(lines) + "\n"


# A decaying loss with deterministic hash noise, computed inside SQLite for step ``s`` of ``:n``.
LOSS_SQL = "0.5 + 2.0 / (1.0 + 8.0 * s / :n) + ((s * 2654435761) % 1000) / 20000.0"


def fill_points(conn: Any, series_id: int, n: int, value_sql: str = LOSS_SQL) -> None:
    """Insert steps 0 … n-1 of one series with values ``value_sql`` (of ``s`` and ``:n``).

    Generated by a recursive CTE inside SQLite: millions of rows a second instead of the
    Python loop's hundreds of thousands.
    """
    conn.execute(
        "WITH RECURSIVE c(s) AS (SELECT 0 UNION ALL SELECT s + 1 FROM c WHERE s + 1 < :n) "
        f"INSERT INTO points(series_id, step, value) SELECT :sid, s, {value_sql} FROM c",
        {"n": n, "sid": series_id})


class ServerProcess(ServeProcess):
    """``trainvitals serve`` in a subprocess (``tests.support.serve``), with its resources."""

    def __init__(self, data_dir: Path | None = None, *, args: Sequence[str] = ()) -> None:
        super().__init__(token=TOKEN, data=data_dir, args=args)
        self.data_dir = self.data

    def rss_mib(self) -> float:
        """The server's resident memory now."""
        return float(psutil.Process(self.pid).memory_info().rss) / 2**20

    def cpu_s(self) -> float:
        """CPU seconds (user + system, all threads) the server has used so far."""
        times = psutil.Process(self.pid).cpu_times()
        return float(times.user + times.system)

    def __enter__(self) -> ServerProcess:
        return self
