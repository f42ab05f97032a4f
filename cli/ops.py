"""The operations subcommands of ``trainvitals``: ``export``, ``import`` and ``train-demo``.

Kept apart from ``cli`` (which registers them) so the ``serve`` path stays short. Imports are
lazy: ``export``/``import`` need no torch, ``train-demo`` no server.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO, cast

__all__ = ["add_commands"]


def _data_dir(args: argparse.Namespace) -> Path:
    """The SQLite data directory to export from or import into.

    Export and import read and write SQLite files only. Without ``--data-dir``, a configured
    PostgreSQL database (TRAINVITALS_DATABASE_URL) is what the user means: say so, instead of
    quietly using a data directory the server does not use.
    """
    if args.data_dir is not None:
        return Path(args.data_dir)
    if os.environ.get("TRAINVITALS_DATABASE_URL"):
        raise SystemExit(f"trainvitals {args.command}: works on a SQLite data directory only, "
                         "and TRAINVITALS_DATABASE_URL says the server stores in PostgreSQL; "
                         "use pg_dump/pg_restore there, or pass --data-dir for a SQLite store")
    return Path(os.environ.get("TRAINVITALS_DATA_DIR", "trainvitals-data"))


def add_commands(commands: Any) -> None:
    """Register the subcommands on the ``trainvitals`` parser's subparsers."""
    data_help = "the server's data directory [env TRAINVITALS_DATA_DIR, default ./trainvitals-data]"
    export = commands.add_parser(
        "export", help="write runs of a data directory to a file (to move them elsewhere)",
        description="Write runs to a JSON-lines file that `trainvitals import` reads, with "
        "NaN and ±Inf kept exactly. Safe while the server runs (it reads a snapshot).")
    export.add_argument("--data-dir", type=Path, default=None, help=data_help)
    export.add_argument("--run", dest="runs", action="append", default=[], metavar="NAME",
                        help="export only this run (repeatable; default: every run)")
    export.add_argument("-o", "--output", required=True,
                        help="file to write (.gz: gzip-compressed; - for stdout)")
    export.set_defaults(run=_export)
    imp = commands.add_parser(
        "import", help="add the runs of an export file to a data directory",
        description="Add the runs of a `trainvitals export` file to a data directory (the "
        "server there may be running). Runs whose name the directory already has are skipped.")
    imp.add_argument("file", help="an export file (.gz allowed; - for stdin)")
    imp.add_argument("--data-dir", type=Path, default=None, help=data_help)
    imp.set_defaults(run=_import)
    demo = commands.add_parser(
        "train-demo", help="train the demo runs against a running server (a pure client)",
        description="Wait until the server is healthy, then train the π³-style demo variants "
        "against it with trainvitals.Monitor, as a training job would. Exit status 1 if a "
        "run was not delivered in full.")
    demo.add_argument("--server", default=None,
                      help="server URL [env TRAINVITALS_SERVER, default ws://127.0.0.1:8765]")
    demo.add_argument("--token", default=None, help="ingest token [env TRAINVITALS_TOKEN]")
    demo.add_argument("--variants", default="exp,overflow,softplus",
                      help="comma-separated runs: exp, overflow, softplus, exp_clamp")
    demo.add_argument("--steps", type=int, default=None, help="steps per run (default: demo's)")
    demo.add_argument("--prefix", default=None,
                      help="run names are PREFIX-VARIANT (default demo-HOST-TIME)")
    demo.add_argument("--wait", type=float, default=120.0,
                      help="seconds to wait for the server to be healthy (default 120)")
    demo.add_argument("--close-timeout", type=float, default=60.0,
                      help="seconds each run waits at its end for the server's last "
                      "acknowledgements (default 60)")
    demo.set_defaults(run=_train_demo)


def _export(args: argparse.Namespace) -> int:
    from trainvitals.cli.progress import ProgressBar
    from trainvitals.server.settings import Settings
    from trainvitals.server.store.transfer import export_runs

    db = Settings.model_construct(data_dir=_data_dir(args)).db_path
    bar = ProgressBar("export", "rows")
    try:
        with _open(args.output, "w") as out:
            names = export_runs(db, out, args.runs, progress=bar)
    except ValueError as exc:
        raise SystemExit(f"trainvitals export: {exc}") from None
    bar.finish()
    print(f"trainvitals export: {len(names)} run(s) written to {args.output}", file=sys.stderr)
    return 0


def _import(args: argparse.Namespace) -> int:
    from trainvitals.cli.progress import ProgressBar
    from trainvitals.server.settings import Settings
    from trainvitals.server.store.transfer import import_runs

    db = Settings.model_construct(data_dir=_data_dir(args)).db_path
    size = 0 if args.file == "-" or args.file.endswith(".gz") else Path(args.file).stat().st_size
    bar = ProgressBar("import", "bytes")
    try:
        with _open(args.file, "r") as lines:
            result = import_runs(db, lines, total_bytes=size, progress=bar)
    except (ValueError, RuntimeError) as exc:  # a bad file, or a store of another version
        raise SystemExit(f"trainvitals import: {exc}") from None
    bar.finish()
    for name in result.skipped:
        print(f"trainvitals import: skipped {name!r}: the store already has a run of that name",
              file=sys.stderr)
    print(f"trainvitals import: {len(result.imported)} run(s) added to {db.parent}",
          file=sys.stderr)
    return 0


@contextlib.contextmanager
def _open(name: str, mode: str) -> Iterator[TextIO]:
    if name == "-":
        yield sys.stdout if mode == "w" else sys.stdin
    elif name.endswith(".gz"):
        import gzip

        with gzip.open(name, mode + "t", encoding="utf-8") as f:
            yield cast(TextIO, f)
    else:
        with open(name, mode, encoding="utf-8") as f:
            yield cast(TextIO, f)


def _train_demo(args: argparse.Namespace) -> int:
    from trainvitals.demo.client import run_client

    server = args.server or os.environ.get("TRAINVITALS_SERVER") or "ws://127.0.0.1:8765"
    token = args.token or os.environ.get("TRAINVITALS_TOKEN")
    return run_client(server, token, args.variants.split(","), steps=args.steps,
                      prefix=args.prefix, wait=args.wait, out=sys.stdout,
                      close_timeout=args.close_timeout)
