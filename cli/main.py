"""The ``trainvitals`` command: ``serve`` runs the server, ``demo`` shows what it catches,
``sync`` uploads what a run left in its spool.

Every server option is a ``Settings`` field, so ``serve --help`` lists them all, generated from
the same descriptions; flags override ``TRAINVITALS_*`` variables, which override defaults.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    return int(args.run(args) or 0)


def _parser() -> argparse.ArgumentParser:
    from trainvitals import __version__

    parser = argparse.ArgumentParser(
        prog="trainvitals", description="Live vital signs and alarms for PyTorch training runs.")
    parser.add_argument("--version", action="version", version=f"trainvitals {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the server and dashboard",
                                description="Run the trainvitals server and dashboard.")
    _add_settings_flags(serve)
    serve.add_argument("--log-level", default="info",
                       choices=["debug", "info", "warning", "error"])
    serve.set_defaults(run=_serve)
    demo = commands.add_parser(
        "demo", help="a server plus π³-style demo runs: one silently stalls, one recovers",
        description="Start a server on 127.0.0.1 and train a small π³-style depth model on the "
        "CPU against it: the exp depth head stalls silently behind a ×0 loss clip, the softplus "
        "twin recovers. Alerts print here as they happen; the dashboard shows the rest.")
    demo.add_argument("--port", type=int, default=8765, help="port (default 8765; busy → free)")
    demo.add_argument("--data-dir", type=Path, default=Path("trainvitals-data"),
                      help="where the SQLite store lives (default ./trainvitals-data)")
    demo.add_argument("--variants", default="exp,overflow,softplus",
                      help="comma-separated runs: exp, overflow, softplus, exp_clamp")
    demo.add_argument("--steps", type=int, default=None, help="steps per run (default: demo's)")
    demo.add_argument("--exit", action="store_true",
                      help="stop the server when the runs end instead of serving on")
    demo.set_defaults(run=_demo)
    sync = commands.add_parser(
        "sync", help="upload the records a run left in its spool (server down or offline)",
        description="Upload what spools hold — records a server never acknowledged, or a run "
        "recorded with Monitor(server=None) — and delete them once the server has them. "
        "Safe to repeat: the server stores each record once.")
    sync.add_argument("path", type=Path, help="a spool directory (default of the plugin: "
                      "~/.cache/trainvitals/spool) or one of its .jsonl files")
    sync.add_argument("--server", default=None, help="server URL, e.g. ws://gpu-box:8765 "
                      "[env TRAINVITALS_SERVER, default ws://127.0.0.1:8765]")
    sync.add_argument("--token", default=None, help="ingest token [env TRAINVITALS_TOKEN]")
    sync.add_argument("--timeout", type=float, default=300.0,
                      help="seconds to wait for the server per stream (default 300)")
    sync.set_defaults(run=_sync)
    from trainvitals.cli.ops import add_commands  # export, import, train-demo

    add_commands(commands)
    return parser


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    try:
        from trainvitals.server import Settings
    except ImportError:  # a plugin-only install (a training image): the other commands work
        parser.epilog = "The server is not installed here: pip install 'trainvitals[server]'."
        return

    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kind, many = _flag_type(field.annotation)
        help_text = f"{field.description} [env TRAINVITALS_{name.upper()}]"
        if kind is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        elif get_origin(field.annotation) is Literal:
            parser.add_argument(flag, dest=name, choices=get_args(field.annotation),
                                default=None, help=help_text)
        elif many:
            parser.add_argument(flag.rstrip("s"), dest=name, action="append", type=kind,
                                default=None, help=help_text + " (repeatable)")
        else:
            parser.add_argument(flag, dest=name, type=kind, default=None, help=help_text)


def _flag_type(annotation: Any) -> tuple[Any, bool]:
    if get_origin(annotation) is list:
        return get_args(annotation)[0], True
    kinds = [a for a in get_args(annotation) if a is not type(None)] or [annotation]
    return kinds[0], False


def _settings_from(args: argparse.Namespace) -> Any:
    from pydantic import ValidationError

    from trainvitals.server import Settings

    given = {name: getattr(args, name) for name in Settings.model_fields
             if getattr(args, name, None) is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise SystemExit(f"trainvitals: bad setting — {problems}") from None
    except ValueError as exc:  # the config file: missing, or not TOML
        raise SystemExit(f"trainvitals: bad setting — {exc}") from None


def _serve(args: argparse.Namespace) -> int:
    from trainvitals.server import serve_forever

    settings = _settings_from(args)
    if settings.ingest_token is None:
        settings.ingest_token = _stored_token(settings.data_dir)
    setup_logging()
    data = settings.data_dir if settings.database_url is None else _database(settings.database_url)
    print(f"trainvitals: dashboard at http://{settings.host}:{settings.port}/ "
          f"(data in {data})", flush=True)
    print(f"trainvitals: trainers connect with server='ws://{settings.host}:{settings.port}' "
          f"and token from {settings.data_dir / 'ingest-token'} or $TRAINVITALS_INGEST_TOKEN",
          flush=True)
    serve_forever(settings, log_level=args.log_level)
    return 0


def _database(url: str) -> str:
    from trainvitals.server.security import redact_url

    return f"PostgreSQL {redact_url(url)}"


def _stored_token(data_dir: Path) -> str:
    """The ingest token kept in the data dir (made on first use), so restarts keep it."""
    from trainvitals.server.security import new_token

    path = data_dir / "ingest-token"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    token = new_token()
    path.touch(mode=0o600)
    path.write_text(token + "\n")
    print(f"trainvitals: new ingest token written to {path}", flush=True)
    return token


def _demo(args: argparse.Namespace) -> int:
    from trainvitals.demo.launch import run_demo

    setup_logging()
    return run_demo(port=args.port, data_dir=args.data_dir, variants=args.variants.split(","),
                    steps=args.steps, keep_serving=not args.exit)


def _sync(args: argparse.Namespace) -> int:
    import os

    from trainvitals.cli.progress import ProgressBar
    from trainvitals.trainer_plugin.delivery.link import ingest_url
    from trainvitals.trainer_plugin.delivery.upload import sync

    url = ingest_url(args.server or os.environ.get("TRAINVITALS_SERVER")
                     or "ws://127.0.0.1:8765")
    assert url is not None
    token = args.token or os.environ.get("TRAINVITALS_TOKEN")
    if not args.path.exists():
        raise SystemExit(f"trainvitals sync: {args.path} does not exist")
    setup_logging(logging.ERROR)  # the summary below says what went wrong, once
    result = sync(args.path, url, token, timeout=args.timeout, out=sys.stderr,
                  progress=lambda label, unit: ProgressBar(label, unit, sys.stderr))
    print(f"trainvitals sync: {result.uploaded} record(s) of {result.streams} stream(s) "
          f"uploaded to {url.removesuffix('/ws/ingest')}"
          + (f"; {result.left} left in {args.path}" if result.left else ""), flush=True)
    return 0 if result.ok else 1


def setup_logging(level: int = logging.INFO) -> None:
    """Alerts and server notes on stderr, one readable line each."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("trainvitals")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False

