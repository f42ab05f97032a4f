"""docs/operations.md is held to the code: every condition kind with its scope and remedy,
the thresholds, the settings' defaults, every health metric a real server exports, and the
sync backoff. A threshold changed in the code without the page fails here."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from trainvitals.server import ServerThread, Settings
from trainvitals.server.alerts.conditions import KINDS, Conditions
from trainvitals.server.ingest import deliveries, readiness, storage
from trainvitals.trainer_plugin.delivery import backoff, upload

DOC = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
FLAT = " ".join(DOC.split())  # phrases may wrap across lines
MiB = 1 << 20


def conditions_table() -> list[list[str]]:
    section = DOC.split("## Conditions", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows]


def test_every_condition_kind_is_listed_with_its_scope_and_remedy() -> None:
    rows = conditions_table()
    listed = {row[0].strip("`") for row in rows}
    assert listed == set(KINDS)
    for row in rows:
        kind = row[0].strip("`")
        scope, remedy = KINDS[kind]
        assert row[1] == scope, row
        assert row[2] in ("warning", "critical"), row
        assert row[5] in (remedy, "(as above)"), row
    for kind in KINDS:  # the first row of each kind spells the remedy out
        first = next(row for row in rows if row[0] == f"`{kind}`")
        assert first[5] == KINDS[kind][1]


def test_the_thresholds_are_the_codes() -> None:
    assert readiness.PING_TIMEOUT == 5.0 and "within 5 s (`PING_TIMEOUT`)" in FLAT
    assert (readiness.LAGGING, readiness.CAUGHT_UP) == (0.5, 0.25)
    assert "queue is **50 %** full" in FLAT and "the queue under **25 %**" in FLAT
    assert (deliveries.FULL, deliveries.NEARLY_FULL) == (0.9, 0.8)
    assert "spool is **90 %** of its limit" in FLAT and "under 80 % full" in FLAT
    assert deliveries.DROP_QUIET_S == 300.0 and "for **300 s**" in FLAT
    assert storage._margin(8 * MiB) == MiB and storage._margin(100 * MiB) == 10 * MiB
    assert "a tenth of the floor, at least 1 MiB" in FLAT
    assert Conditions()._update_every == 5.0 and "at most every 5 s" in FLAT
    assert Conditions()._resolved.maxlen == 200 and "the latest 200 resolved" in FLAT


def test_the_settings_defaults_are_the_codes() -> None:
    fields = Settings.model_fields
    assert fields["min_free_bytes"].default == 256 * MiB
    assert "| `--min-free-bytes` | 256 MiB |" in FLAT
    assert fields["min_free_percent"].default == 0.0 and "| `--min-free-percent` | 0 |" in FLAT
    assert fields["health_interval"].default == 5.0 and "| `--health-interval` | 5 s |" in FLAT
    assert fields["backlog_warn_s"].default == 60.0 and "| `--backlog-warn-s` | 60 s |" in FLAT


def test_the_backoff_is_the_codes() -> None:
    assert (upload.RETRY_FIRST_S, upload.RETRY_CAP_S) == (1.0, 30.0)
    assert "1 s doubling to 30 s in `sync`" in FLAT and "(1, 2, 4, 8, 16, 30 s)" in FLAT
    defaults = backoff.backoff_delays.__defaults__
    assert defaults is not None and defaults[:4] == (0.1, 2.0, 10.0, 0.1)
    assert "0.1 s doubling to 10 s in the training process" in FLAT and "±10 %" in FLAT


def test_every_health_metric_a_server_exports_is_documented(tmp_path: Path) -> None:
    settings = Settings(port=0, data_dir=tmp_path, ingest_token="t" * 16, log_alerts=False)
    with ServerThread(settings) as srv:
        text = httpx.get(f"{srv.http_url}/metrics", timeout=30).text
    names = {m.group(1) for m in re.finditer(
        r"^(trainvitals_(?:ready|disk|commits_failed|frames_refused|open_conditions|plugin_)"
        r"[a-z_]*)[{ ]", text, re.M)}
    assert len(names) == 12, names
    section = DOC.split("## `/metrics`", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(trainvitals_[a-z_]+)", section, re.M))
    assert documented == names
