"""docs/reliability.md names the test behind each guarantee: every name must exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reliability.md"


def test_every_test_the_reliability_doc_names_exists() -> None:
    text = DOC.read_text()
    named: set[tuple[str, str]] = set()
    for line in text.splitlines():
        last = ""  # "`::name`" refers to the file named last on the same line
        for path, name in re.findall(r"`(tests/[\w/]+\.py)?(?:::(\w+))?`", line):
            last = path or last
            if name:
                named.add((last, name))
            elif path:
                assert (ROOT / path).is_file(), path
    assert len(named) >= 30
    missing = []
    for path, name in sorted(named):
        tree = ast.parse((ROOT / path).read_text())
        functions = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        if name not in functions:
            missing.append(f"{path}::{name}")
    assert missing == []
