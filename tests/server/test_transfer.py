"""``trainvitals export`` / ``import`` between two real servers, through the real CLI."""

from __future__ import annotations

import io
import json
import math
import sqlite3
import struct
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from trainvitals.cli import main
from trainvitals.protocol import (
    Batch,
    ClipEvent,
    Record,
    RunEnd,
    RunStart,
    Step,
    TensorStats,
    encode,
)
from trainvitals.server import ServerThread, SQLiteStore
from trainvitals.server.store.transfer import export_runs, import_runs

TOKEN = "ingest-token-for-tests"  # the conftest's
VOLATILE = {"id", "idle_s"}  # store ids, and seconds since the last record (a clock)
TRICKY = [1.0, math.nan, math.inf, -math.inf, 5e-324, 1.7976931348623157e308, -0.0, 0.1]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command in its own process."""
    return subprocess.run([sys.executable, "-m", "trainvitals.cli", *args],
                          capture_output=True, text=True, timeout=120, check=False)


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The same command in this process (faster): exit status, stdout, stderr."""
    try:
        status = main(list(args))
    except SystemExit as exc:
        status = 1 if isinstance(exc.code, str) else int(exc.code or 0)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    out, err = capsys.readouterr()
    return status, out, err


def records(run: str, rank: int = 0, *, end: bool = True) -> list[Record]:
    out: list[Record] = [RunStart(run=run, session=f"s{rank}", rank=rank, world_size=2,
                                  time=10.0, host="gpu-1", pid=7, config={"lr": 0.1,
                                  "note": "Infinity", "bound": math.inf})]
    for i, x in enumerate(TRICKY):
        stats = TensorStats(count=4, nan=int(math.isnan(x)), posinf=0, neginf=0, min=-x,
                            max=x, mean=x / 2, absmax=abs(x), dtype="float32",
                            headroom=88.72 - x if i % 2 else None)
        clip = ClipEvent(raw=x, threshold=10.0, action="zeroed", reason="above_threshold",
                         components={"points": x, "normal": 1.5}) if i % 3 == 0 else None
        out.append(Step(run=run, session=f"s{rank}", rank=rank, seq=i + 1, step=i,
                        time=11.0 + i, loss=x, loss_used=0.0 if clip else x,
                        grad_norm=x, lr=1e-3, components={"points": x},
                        scalars={"val/loss": -x}, tensors={"depth_raw": stats}, clip=clip))
    if end:
        out.append(RunEnd(run=run, session=f"s{rank}", rank=rank, seq=len(TRICKY) + 1,
                          time=30.0, status="crashed", reason="NaN loss"))
    return out


def ingest(srv: ServerThread, batch: list[Record]) -> None:
    with connect(f"{srv.ws_url}/ws/ingest", proxy=None,
                 additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
        ws.send(encode(Batch(tuple(batch))))
        assert json.loads(ws.recv(timeout=10))["seq"] == batch[-1].seq


def everything(srv: ServerThread) -> dict[str, Any]:
    """What the REST API says about every run, ids left out (they differ between stores)."""
    api = httpx.Client(base_url=srv.http_url)
    seen: dict[str, Any] = {}
    for run in api.get("/api/runs").json()["runs"]:
        detail = api.get(f"/api/runs/{run['id']}").json()
        names = sorted({s["name"] for s in detail["series"]})
        series = api.get(f"/api/runs/{run['id']}/series", params={"name": names}).text
        clips = api.get(f"/api/runs/{run['id']}/clips").text
        seen[run["name"]] = {"run": {k: v for k, v in detail["run"].items() if k not in VOLATILE},
                             "series_list": detail["series"],
                             "series": series.replace(f'"run_id":{run["id"]}', ""),
                             "clips": clips.replace(f'"run_id":{run["id"]}', "")}
    seen["alerts"] = api.get("/api/alerts").json()
    return seen


def test_round_trip_between_two_servers_keeps_every_value_exactly(
        start_server: Callable[..., ServerThread], tmp_path: Path) -> None:
    a = start_server(data_dir=tmp_path / "a")
    ingest(a, records("pi3-a", 0) + records("pi3-a", 1))
    ingest(a, records("pi3-b", 0, end=False))
    b = start_server(data_dir=tmp_path / "b")  # running while runs are imported into it
    dump = tmp_path / "runs.jsonl"

    exported = cli("export", "--data-dir", str(tmp_path / "a"), "-o", str(dump))
    assert exported.returncode == 0, exported.stderr
    assert "[##############################] 100%" in exported.stderr
    assert "2 run(s) written" in exported.stderr
    assert '"table":"point_blocks"' not in dump.read_text()  # derived: rebuilt on import
    imported = cli("import", str(dump), "--data-dir", str(tmp_path / "b"))
    assert imported.returncode == 0, imported.stderr
    assert "100%" in imported.stderr and "2 run(s) added" in imported.stderr

    before, after = everything(a), everything(b)
    assert after.keys() == before.keys() == {"pi3-a", "pi3-b", "alerts"}
    for key in before:
        assert after[key] == before[key], key
    assert '"NaN"' in before["pi3-a"]["series"] and '"-Infinity"' in before["pi3-a"]["series"]
    assert before["alerts"]["alerts"]  # the nonfinite alerts travelled too
    _same_bits(tmp_path / "a", tmp_path / "b")


def _same_bits(a: Path, b: Path) -> None:
    """Bit-exact comparison of every stored point (NaN, -0.0 and denormals included)."""
    sa, sb = SQLiteStore(a / "trainvitals.sqlite3"), SQLiteStore(b / "trainvitals.sqlite3")
    for run in sa.runs():
        other = sb.run_id(run.name)
        assert other is not None
        for info in sa.series_list(run.id):
            (x,) = sa.series(run.id, info.name, rank=info.rank)
            (y,) = sb.series(other, info.name, rank=info.rank)
            assert x.steps == y.steps
            assert [struct.pack("<d", v) for v in x.values] == \
                   [struct.pack("<d", v) for v in y.values], info.name
    assert _blocks(a) == _blocks(b)  # import rebuilt the summaries it does not carry


def _blocks(data_dir: Path) -> dict[tuple[str, int, str], list[tuple[object, ...]]]:
    """Every block summary, keyed by run name, rank and series name (ids differ)."""
    found: dict[tuple[str, int, str], list[tuple[object, ...]]] = {}
    with closing(sqlite3.connect(data_dir / "trainvitals.sqlite3")) as conn:
        for run, rank, name, *row in conn.execute(
                "SELECT r.name, s.rank, s.name, b.* FROM point_blocks b JOIN series s "
                "ON s.id = b.series_id JOIN runs r ON r.id = s.run_id ORDER BY b.block"):
            found.setdefault((run, rank, name), []).append(tuple(row[1:]))  # without series_id
    assert found
    return found


def test_import_skips_runs_the_target_has_and_exports_one_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = SQLiteStore(tmp_path / "src" / "trainvitals.sqlite3")
    src.open()
    src.write(records("keep") + records("other"))
    src.close()
    dump = tmp_path / "one.jsonl.gz"
    status, _, err = run_main(capsys, "export", "--data-dir", str(tmp_path / "src"),
                              "--run", "keep", "-o", str(dump))
    assert status == 0, err
    status, _, err = run_main(capsys, "import", str(dump), "--data-dir", str(tmp_path / "dst"))
    assert status == 0 and "1 run(s) added" in err, err
    status, _, err = run_main(capsys, "import", str(dump), "--data-dir", str(tmp_path / "dst"))
    assert status == 0
    assert "skipped 'keep'" in err and "0 run(s) added" in err
    dst = SQLiteStore(tmp_path / "dst" / "trainvitals.sqlite3")
    assert [r.name for r in dst.runs()] == ["keep"]


def test_export_through_stdout_and_import_through_stdin(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    src = SQLiteStore(tmp_path / "src" / "trainvitals.sqlite3")
    src.open()
    src.write(records("piped"))
    src.close()
    status, out, _ = run_main(capsys, "export", "--data-dir", str(tmp_path / "src"), "-o", "-")
    assert status == 0 and out.startswith('{"format":"trainvitals-runs"')
    monkeypatch.setattr(sys, "stdin", io.StringIO(out))
    status, _, err = run_main(capsys, "import", "-", "--data-dir", str(tmp_path / "dst"))
    assert status == 0 and "1 run(s) added" in err, err


def test_truncated_or_foreign_files_are_refused_and_change_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = SQLiteStore(tmp_path / "src" / "trainvitals.sqlite3")
    src.open()
    src.write(records("whole"))
    src.close()
    lines: list[str] = []

    class Sink:
        def write(self, text: str) -> None:
            lines.append(text)

    export_runs(src.path, Sink(), progress=None)  # type: ignore[arg-type]
    text = "".join(lines).splitlines(keepends=True)
    dst = tmp_path / "dst" / "trainvitals.sqlite3"
    with pytest.raises(ValueError, match="truncated"):
        import_runs(dst, text[:-1])
    assert SQLiteStore(dst).runs() == []
    with pytest.raises(ValueError, match="not a trainvitals export"):
        import_runs(dst, ['{"some": "json"}\n'])
    status, _, err = run_main(capsys, "export", "--data-dir", str(tmp_path / "src"),
                              "--run", "nope", "-o", str(tmp_path / "x.jsonl"))
    assert status == 1 and "no such run(s): nope" in err
