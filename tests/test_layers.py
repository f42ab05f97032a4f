"""The layers hold: no module imports upward or sideways where it must not.

Every import statement counts — at module level, inside functions, under ``TYPE_CHECKING`` —
because a lazy import is still a dependency. The rules are data (``RULES``); the checker is
shown failing on planted imports first, so a green run means something.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Rule:
    """Modules under ``layer`` must not import anything under ``forbidden`` (except
    ``allowed``, which wins)."""

    layer: str
    forbidden: tuple[str, ...]
    why: str
    allowed: tuple[str, ...] = ()


SERVER_SIDEWAYS = ("trainvitals.server.http", "trainvitals.server.ingest",
                   "trainvitals.server.live", "trainvitals.server.notify",
                   "trainvitals.server.views", "trainvitals.server.app",
                   "trainvitals.server.runner")
WEB = ("fastapi", "starlette", "uvicorn")
RULES = (
    Rule("trainvitals.protocol", ("trainvitals",), "protocol imports nothing of ours",
         allowed=("trainvitals.protocol",)),
    Rule("trainvitals.trainer_plugin", ("trainvitals.server", "trainvitals.cli",
                                        "trainvitals.demo", *WEB),
         "the plugin runs in the training job and never imports the server"),
    Rule("trainvitals.server", ("trainvitals.trainer_plugin", "torch", "trainvitals.cli",
                                "trainvitals.demo"),
         "the server never imports the plugin or torch"),
    Rule("trainvitals.trainer_plugin.delivery",
         ("torch", "trainvitals.trainer_plugin"),
         "delivery is torch-free and below the values, watches and adapters",
         allowed=("trainvitals.trainer_plugin.delivery",)),
    Rule("trainvitals.server.store", (*SERVER_SIDEWAYS, *WEB),
         "the store never imports HTTP or the layers that use it"),
    Rule("trainvitals.server.alerts", ("trainvitals.server", *WEB),
         "alert rules are pure: records in, findings out",
         allowed=("trainvitals.server.alerts",)),
    Rule("trainvitals.server.views", ("trainvitals.server.http", "trainvitals.server.ingest",
                                      "trainvitals.server.live", "trainvitals.server.notify",
                                      *WEB),
         "views derive from the store and the alerts; routes live in http/"),
)


def imports_of(source: str, module: str) -> list[tuple[int, str]]:
    """``(line, imported module)`` for every import in ``source`` (relative ones resolved)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.split(".")[: -node.level]
                base = ".".join([*parent, *([base] if base else [])])
            # ``from pkg import name`` may import the submodule ``pkg.name``: count both
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(modules: Mapping[str, str], rules: Iterable[Rule] = RULES) -> list[str]:
    """Each import in ``modules`` (module name → source) that a rule forbids, described."""
    rules = tuple(rules)
    out = []
    for module, source in sorted(modules.items()):
        for line, imported in imports_of(source, module):
            for rule in rules:
                if not _under(module, rule.layer):
                    continue
                if any(_under(imported, a) for a in rule.allowed):
                    continue
                if any(_under(imported, f) for f in rule.forbidden):
                    out.append(f"{module}:{line} imports {imported}: {rule.why}")
    return sorted(set(out))


def stdlib_violations(modules: Mapping[str, str], layer: str) -> list[str]:
    """Imports under ``layer`` of anything that is neither the stdlib nor ``layer`` itself."""
    out = []
    for module, source in modules.items():
        if not _under(module, layer):
            continue
        for line, imported in imports_of(source, module):
            top = imported.split(".")[0]
            if top not in sys.stdlib_module_names and not _under(imported, layer) \
                    and top != "__future__" and not _under(imported, "trainvitals"):
                out.append(f"{module}:{line} imports {imported}: {layer} is stdlib-only")
    return sorted(set(out))


def our_modules() -> dict[str, str]:
    """Every module of the distribution: name → source, from pyproject's package folders."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping: dict[str, str] = setuptools["package-dir"]
    modules: dict[str, str] = {}
    for package in setuptools["packages"]:
        parts = package.split(".")
        head = max((p for p in mapping if _under(package, p)), key=len)
        folder = ROOT / mapping[head] / Path(*parts[len(head.split(".")):])
        for path in sorted(folder.glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            modules[name] = path.read_text()
    return modules


# --------------------------------------------------------------------------- the checker fails


PLANTED = {
    "trainvitals.protocol.codec": "import json\nfrom trainvitals.server.store import Store\n",
    "trainvitals.trainer_plugin.values.stats": "def f():\n    import trainvitals.server.app\n",
    "trainvitals.server.views.health": (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\n"),
    "trainvitals.trainer_plugin.delivery.link": "from ..values import stats\n",
    "trainvitals.server.store.sqlite.store": "from trainvitals.server.http import rest\n",
    "trainvitals.server.alerts.rules": "from trainvitals.server import ingest\n",
    "trainvitals.server.store.base": "from trainvitals.server.alerts import Alert\n",  # allowed
}


def test_the_checker_finds_every_planted_upward_or_sideways_import() -> None:
    found = violations(PLANTED)
    flagged = {v.split(":")[0] for v in found}
    assert flagged == set(PLANTED) - {"trainvitals.server.store.base"}
    reasons = {v.split(":")[0]: v.split(": ", 1)[1] for v in found}
    assert reasons["trainvitals.protocol.codec"] == "protocol imports nothing of ours"
    assert reasons["trainvitals.server.views.health"] == (
        "the server never imports the plugin or torch")
    assert "delivery is torch-free" in reasons["trainvitals.trainer_plugin.delivery.link"]
    assert "never imports HTTP" in reasons["trainvitals.server.store.sqlite.store"]
    assert stdlib_violations({"trainvitals.protocol.x": "import numpy\nimport json\n"},
                             "trainvitals.protocol") == [
        "trainvitals.protocol.x:1 imports numpy: trainvitals.protocol is stdlib-only"]


def test_the_tree_keeps_every_layer_rule() -> None:
    modules = our_modules()
    assert "trainvitals.server.store.sqlite.store" in modules  # the walk found the layers
    assert "trainvitals.trainer_plugin.delivery.link" in modules
    assert violations(modules) == []


def test_protocol_is_stdlib_only() -> None:
    assert stdlib_violations(our_modules(), "trainvitals.protocol") == []


# --------------------------------------------------------------------------- the page

NETWORK = re.compile(r"\bfetch\s*\(|new\s+WebSocket\b|XMLHttpRequest|new\s+EventSource\b")


def network_calls(files: Mapping[str, str]) -> list[str]:
    """``file:line`` of every network call outside ``api.js`` (the page's one I/O module)."""
    return [f"{name}:{i}" for name, text in sorted(files.items()) if name != "api.js"
            for i, line in enumerate(text.splitlines(), 1)
            if NETWORK.search(line) and not line.lstrip().startswith("//")]


def test_the_page_checker_finds_a_planted_fetch() -> None:
    assert network_calls({"runs.js": "const a = 1;\nconst r = await fetch('/api/runs');\n",
                          "api.js": "fetch(x)\n", "live.js": "s = new WebSocket(u)\n"}) == [
        "live.js:1", "runs.js:2"]


def test_no_page_module_reaches_around_api_js() -> None:
    files = {p.name: p.read_text() for p in (ROOT / "frontend").glob("*.js")}
    assert "api.js" in files and "app.js" in files
    assert network_calls(files) == []
