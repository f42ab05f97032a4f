"""The ``trainvitals`` command: ``serve`` runs the server, ``demo`` shows what it catches.

Every server option is a ``Settings`` field, so ``serve --help`` lists them all, generated from
the same descriptions; flags override ``TRAINVITALS_*`` variables, which override defaults.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args, get_origin

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
    return parser


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    from trainvitals.server import Settings

    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kind, many = _flag_type(field.annotation)
        help_text = f"{field.description} [env TRAINVITALS_{name.upper()}]"
        if kind is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
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


def _serve(args: argparse.Namespace) -> int:
    from trainvitals.server import serve_forever

    settings = _settings_from(args)
    if settings.ingest_token is None:
        settings.ingest_token = _stored_token(settings.data_dir)
    setup_logging()
    print(f"trainvitals: dashboard at http://{settings.host}:{settings.port}/ "
          f"(data in {settings.data_dir})", flush=True)
    print(f"trainvitals: trainers connect with server='ws://{settings.host}:{settings.port}' "
          f"and token from {settings.data_dir / 'ingest-token'} or $TRAINVITALS_INGEST_TOKEN",
          flush=True)
    serve_forever(settings, log_level=args.log_level)
    return 0


def _stored_token(data_dir: Path) -> str:
    """The ingest token kept in the data dir (made on first use), so restarts keep it."""
    path = data_dir / "ingest-token"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    path.touch(mode=0o600)
    path.write_text(token + "\n")
    print(f"trainvitals: new ingest token written to {path}", flush=True)
    return token


def _demo(args: argparse.Namespace) -> int:
    from trainvitals.demo.launch import run_demo

    setup_logging()
    return run_demo(port=args.port, data_dir=args.data_dir, variants=args.variants.split(","),
                    steps=args.steps, keep_serving=not args.exit)


def setup_logging(level: int = logging.INFO) -> None:
    """Alerts and server notes on stderr, one readable line each."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("trainvitals")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


if __name__ == "__main__":
    raise SystemExit(main())
