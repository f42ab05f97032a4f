"""Summarise a py-spy profile (``py-spy record --format raw``): where the samples went.

    py-spy record --format raw --threads -o prof.txt -- .venv/bin/python bench/hotpath.py
    .venv/bin/python bench/pyspy.py prof.txt [--top 15] [--thread NAME] [--within FUNCTION]

Prints the share of samples per line (self time: the innermost frame), per trainvitals or
bench function (inclusive: anywhere on the stack) and per thread.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import sys
from pathlib import Path

from common import fmt, table

__all__ = ["py_spy", "summarise"]


def py_spy() -> str:
    """The py-spy executable: the one pip put beside this interpreter, else from PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else (shutil.which("py-spy") or "py-spy")


def summarise(path: Path, top: int = 12, thread: str | None = None,
              within: str | None = None) -> tuple[list[list[str]], int]:
    """Rows (kind, where, % of samples) and the number of samples counted.

    ``thread``: only threads whose label contains it; ``within``: only stacks with a frame
    whose function name is exactly it (e.g. ``Monitor.tensor``).
    """
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        name = next((f for f in frames if f.startswith("thread")), "thread ?")
        if thread is not None and thread not in name:
            continue
        code = [f for f in frames if not f.startswith(("process", "thread"))]
        if not code or (within is not None
                        and not any(f.partition(" (")[0] == within for f in code)):
            continue
        count = int(count_text)
        total += count
        threads[name] += count
        own[_short(code[-1], keep_line=True)] += count
        for func in {_short(f, keep_line=False) for f in code if _ours(f)}:
            inclusive[func] += count
    share = 100 / max(1, total)
    rows = [["self (line)", f, fmt(n * share, 1)] for f, n in own.most_common(top)]
    rows += [["inclusive (trainvitals/bench function)", f, fmt(n * share, 1)]
             for f, n in inclusive.most_common(top)]
    rows += [["thread", t, fmt(n * share, 1)] for t, n in threads.most_common(6)]
    return rows, total


def _ours(frame: str) -> bool:
    """A frame of trainvitals (installed or editable) or of the bench scripts."""
    return re.search(r"[( /](trainvitals|bench)/", frame) is not None


def _short(frame: str, *, keep_line: bool) -> str:
    """``name (/long/path/pkg/file.py:123)`` → ``name (pkg/file.py:123)``."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path, _, line = where.rpartition(":") if where.rpartition(":")[2].isdigit() else (where, "",
                                                                                        "")
    short = "/".join(path.rsplit("/", 2)[-2:])
    return f"{name} ({short}:{line})" if keep_line and line else f"{name} ({short})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--thread", help="only stacks of threads whose label contains this")
    parser.add_argument("--within", help="only stacks through this function (e.g. Monitor.tensor)")
    args = parser.parse_args()
    rows, total = summarise(args.profile, args.top, args.thread, args.within)
    print(f"{total} samples in {args.profile}\n")
    print(table(["kind", "where", "% of samples"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
