"""``frontend/contract.json`` is exactly what ``protocol.contract`` says, and says what it must."""

from __future__ import annotations

import json
from pathlib import Path

from trainvitals.protocol import TensorStats
from trainvitals.protocol.contract import contract, contract_json
from trainvitals.protocol.series import parse_series, step_values, tensor_series

FILE = Path(__file__).resolve().parents[2] / "frontend" / "contract.json"


def test_the_committed_contract_is_the_generated_one() -> None:
    assert FILE.read_text() == contract_json(), (
        "frontend/contract.json is stale: python -m trainvitals.protocol.contract "
        "> frontend/contract.json")


def test_the_contract_lists_every_numeric_tensor_statistic_in_field_order() -> None:
    stats = TensorStats(count=1, nan=0, posinf=0, neginf=0, min=0.0, max=1.0, mean=0.5,
                        absmax=1.0, dtype="float32", headroom=2.0)
    names = [parse_series(s).stat for s in
             step_values_of_tensor(stats)]
    assert names == contract()["tensor_stats"]
    assert json.loads(FILE.read_text())["tensor_stats"] == names


def step_values_of_tensor(stats: TensorStats) -> list[str]:
    from trainvitals.protocol import Step

    return list(step_values(Step(run="r", session="s", seq=1, step=0,
                                 tensors={"a/b": stats})))


def test_tensor_names_may_hold_slashes_and_the_stat_is_the_last_part() -> None:
    parsed = parse_series(tensor_series("head/depth_raw", "max"))
    assert (parsed.kind, parsed.name, parsed.stat) == ("tensor", "head/depth_raw", "max")
    assert parse_series("tensor/x/nonsense").kind == "other"
    assert parse_series("loss/points").name == "points"
    assert parse_series("grad_norm").kind == "top"
