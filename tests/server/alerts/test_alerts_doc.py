"""docs/alerts.md shows the rules table and the remedies table exactly as the code has them."""

from __future__ import annotations

from pathlib import Path

from trainvitals.server.alerts.incidents.remedies import REMEDIES
from trainvitals.server.alerts.registry import RULES

DOC = (Path(__file__).resolve().parents[3] / "docs" / "alerts.md").read_text()


def rows(first_header: str) -> list[list[str]]:
    """The rows of the table whose header starts with ``| first_header |``."""
    lines = DOC.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    body = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        body.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return body


def test_the_rules_table_is_the_registry() -> None:
    table = rows("rule")
    assert [r[0] for r in table] == [f"`{rule.name}`" for rule in RULES]
    for row, rule in zip(table, RULES, strict=True):
        assert row[1:3] == [rule.severity, rule.summary], rule.name
        assert row[3] == ", ".join(f"`{e}`" for e in sorted(rule.explains)), rule.name


def test_the_remedies_table_is_the_code() -> None:
    assert {r[0].strip("`"): r[1] for r in rows("kind")} == REMEDIES
