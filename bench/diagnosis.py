"""Diagnosis: every planted failure × wiring level, and the incident the server made of it.

Runs the diagnosis suite's cases (``tests/diagnosis/cases``: small seeded CPU training runs,
each with one bug a researcher would write, plus two healthy controls) at the three wiring
levels (``minimal``, ``everything``, ``attach``) against one embedded server
(``trainvitals.server.ServerThread``), then reads ``GET /api/runs/{id}/incidents``. For each
case × level it prints the true onset (found by the case itself with plain torch), the
incident's onset, how many incidents there were, the headline, the evidence count and the
suite's verdict (``tests/diagnosis/test_diagnosis.py``'s ``EXPECT``: one incident per cause,
none on healthy runs, onset within one step, the facts the headline must name).

    .venv/bin/python bench/diagnosis.py                      # every case, every level
    .venv/bin/python bench/diagnosis.py --quick              # one level, no two-rank case
    .venv/bin/python bench/diagnosis.py --only conf_exp lr_spike --levels attach
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from common import LoadMeter, header, note, table

from tests.diagnosis.cases import CASES, LEVELS, Case, run_case
from tests.diagnosis.test_diagnosis import check_incidents
from trainvitals.server import ServerThread, Settings

TOKEN = "bench-diagnosis-token"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", "--smoke", action="store_true",
                        help="the minimal level only, without the two-rank case")
    parser.add_argument("--only", nargs="+", choices=[c.name for c in CASES],
                        help="cases to run (default: all)")
    parser.add_argument("--levels", nargs="+", choices=LEVELS, default=list(LEVELS))
    args = parser.parse_args()
    cases = [c for c in CASES if args.only is None or c.name in args.only]
    levels = ["minimal"] if args.quick else args.levels
    if args.quick:
        cases = [c for c in cases if c.world_size == 1]
    meter = LoadMeter()
    rows: list[list[str]] = []
    api_missing = False
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch:
        server = ServerThread(Settings(port=0, data_dir=Path(scratch) / "data",
                                       ingest_token=TOKEN, log_alerts=False)).start()
        try:
            for case in cases:
                for level in levels:
                    note(f"{case.name} / {level}")
                    row, missing = measure(server, case, level, Path(scratch))
                    rows.append(row)
                    api_missing = api_missing or missing
        finally:
            server.stop()
    extra = [f"{len(cases)} cases × {len(levels)} levels in {time.monotonic() - started:.0f} s; "
             "one embedded server (SQLite), torch threads 1"]
    if api_missing:
        extra.append("the incident API answered 404: incident columns are empty")
    print(header("Diagnosis: planted failures × wiring levels (bench/diagnosis.py)", meter,
                 extra=extra))
    print(table(["case", "bug", "true onset", "rank"],
                [[c.name, c.bug, _step(c.onset), str(c.rank)] for c in cases]))
    print()
    print(table(["case", "level", "true onset", "incident onset", "incidents", "headline",
                 "evidence", "verdict"], rows))
    print()
    return 0


def measure(server: ServerThread, case: Case, level: str,
            scratch: Path) -> tuple[list[str], bool]:
    """One case at one level: its table row, and whether the incident API was missing."""
    run = f"{case.name}-{level}"
    truths = run_case(case, level, run, server=server.ws_url, token=TOKEN, scratch=scratch)
    seen = truths[case.rank].onset
    true_onset = _step(seen) + ("" if seen == case.onset else f" (declared {case.onset})")
    api = f"{server.http_url}/api"
    (stored,) = [r for r in httpx.get(f"{api}/runs").json()["runs"] if r["name"] == run]
    response = httpx.get(f"{api}/runs/{stored['id']}/incidents")
    if response.status_code != 200:
        return [case.name, level, true_onset, "—", "—", "—", "—",
                f"no incident API ({response.status_code})"], True
    incidents: list[dict[str, Any]] = response.json()["incidents"]
    first = incidents[0] if incidents else {}
    return [case.name, level, true_onset,
            "; ".join(_onset(i) for i in incidents) or "—",
            str(len(incidents)), _cell(first.get("headline", "—")),
            str(first.get("evidence_count", "—")), verdict(case, level, incidents)], False


def verdict(case: Case, level: str, incidents: list[dict[str, Any]]) -> str:
    """The suite's own judgement of one case × level (``check_incidents``), in a few words."""
    try:
        check_incidents(case, level, incidents)
    except AssertionError as failed:
        return _cell(str(failed).splitlines()[0].split(": ", 1)[-1])
    return "ok"


def _onset(incident: dict[str, Any]) -> str:
    """``9`` or, for a warning that escalated, ``9 → 21`` (warned, then failed)."""
    escalated = incident.get("escalated_step")
    shown = str(incident["onset_step"])
    if escalated is not None and escalated != incident["onset_step"]:
        shown += f" → {escalated}"
    return f"{shown} (rank {incident['rank']})"


def _step(step: int | None) -> str:
    return "—" if step is None else str(step)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


if __name__ == "__main__":
    raise SystemExit(main())
