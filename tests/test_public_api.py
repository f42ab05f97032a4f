"""The public API is exactly what the README documents: each public package's ``__all__``
equals the names in the README's "Public API" table, and every name is importable."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def documented() -> dict[str, set[str]]:
    """Package → the backticked names in its row of the README's Public API table."""
    section = README.read_text().split("### Public API", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    table: dict[str, set[str]] = {}
    for row in rows:
        package, names = row.strip("|").split("|", 1)
        # only the leading name of each entry: the parenthesised remarks are not names
        entries = re.sub(r"\([^)]*\)", "", names)
        table[package.strip().strip("`")] = set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", entries))
    return table


def test_the_readme_documents_each_public_package() -> None:
    assert set(documented()) == {"trainvitals", "trainvitals.trainer_plugin",
                                 "trainvitals.trainer_plugin.adapters", "trainvitals.server",
                                 "trainvitals.protocol"}


def test_every_public_package_exports_exactly_what_the_readme_documents() -> None:
    for package, names in documented().items():
        module = importlib.import_module(package)
        assert set(module.__all__) == names, package
        assert len(module.__all__) == len(set(module.__all__)), f"{package}: duplicates"


def test_every_documented_name_is_importable() -> None:
    for package, names in documented().items():
        module = importlib.import_module(package)
        for name in names:
            assert getattr(module, name) is not None, f"{package}.{name}"


def test_the_table_parser_sees_a_missing_name() -> None:
    row = "| `pkg` | `a`, `b` (`not_a_name`), `c` |"
    entries = re.sub(r"\([^)]*\)", "", row.strip("|").split("|", 1)[1])
    assert set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", entries)) == {"a", "b", "c"}
