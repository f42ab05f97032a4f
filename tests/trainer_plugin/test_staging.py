"""Step staging: values added by key come back by key, as floats, after one seal().wait().

Most tests run twice (the ``rules`` fixture): CPU tensors read when added, and CUDA's rules
(tensors concatenated per device and copied once at ``seal``)."""

from __future__ import annotations

import math
import threading

import pytest
import torch

from trainvitals.trainer_plugin.values.staging import StepStaging


def test_values_of_every_kind_come_back_by_key(rules: str) -> None:
    staging = StepStaging()
    staging.add("loss", torch.tensor(1.5, requires_grad=True))
    staging.add("vec", torch.tensor([1, 2, 3]))
    staging.add("half", torch.tensor([0.5, -2.0], dtype=torch.float16))
    staging.add("bf", torch.tensor(3.0, dtype=torch.bfloat16))
    staging.add("flag", torch.tensor(True))
    staging.add("matrix", torch.arange(6.0).reshape(2, 3))
    staging.add("lr", 0.001)
    staging.add("epoch", 3)
    assert len(staging) == 8

    values = staging.seal().wait()

    assert values == {"loss": [1.5], "vec": [1.0, 2.0, 3.0], "half": [0.5, -2.0], "bf": [3.0],
                      "flag": [1.0], "matrix": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], "lr": [0.001],
                      "epoch": [3.0]}
    assert all(type(v) is float for vs in values.values() for v in vs)
    assert len(staging) == 0


def test_a_later_add_replaces_the_earlier_value_of_any_kind(rules: str) -> None:
    staging = StepStaging()
    staging.add("a", torch.tensor(1.0))
    staging.add("b", 2.0)
    staging.add("a", torch.tensor([7.0, 8.0]))  # tensor replaces tensor
    staging.add("b", torch.tensor(9.0))  # tensor replaces number
    staging.add("c", torch.tensor(4.0))
    staging.add("c", 5)  # number replaces tensor
    assert len(staging) == 3
    assert staging.seal().wait() == {"a": [7.0, 8.0], "b": [9.0], "c": [5.0]}


def test_seal_empties_the_staging_for_the_next_step(rules: str) -> None:
    staging = StepStaging()
    staging.add("x", torch.tensor(1.0))
    first = staging.seal()
    assert staging.seal().wait() == {}
    staging.add("x", torch.tensor(2.0))
    second = staging.seal()
    assert (first.wait(), second.wait()) == ({"x": [1.0]}, {"x": [2.0]})


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_values_are_taken_when_added_not_when_sealed(rules: str, dtype: torch.dtype) -> None:
    staging = StepStaging()
    running = torch.tensor([1.0, 2.0], dtype=dtype)
    staging.add("running", running)
    running.mul_(10)  # the training loop keeps updating its own tensor in place
    pending = staging.seal()
    running.add_(1)
    assert pending.wait() == {"running": [1.0, 2.0]}


def test_numbers_are_staged_as_they_are_and_cpu_tensors_without_a_device_copy(
        rules: str) -> None:
    staging = StepStaging()
    staging.add("stats", [0.0, 1.0, math.inf, 4.0])  # what host_stats returns
    staging.add("t", torch.tensor([2.5, -1.0]))
    pending = staging.seal()
    assert len(pending.host) == (1 if rules == "cuda rules" else 0)
    assert pending.wait() == {"stats": [0.0, 1.0, math.inf, 4.0], "t": [2.5, -1.0]}


def test_wait_on_another_thread(rules: str) -> None:
    staging = StepStaging()
    staging.add("x", torch.tensor([4.0, 5.0]))
    staging.add("k", 1)
    pending = staging.seal()
    out: list[dict[str, list[float]]] = []
    thread = threading.Thread(target=lambda: out.append(pending.wait()))
    thread.start()
    thread.join(10)
    assert out == [{"x": [4.0, 5.0], "k": [1.0]}]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_values_on_several_devices_come_back_by_key() -> None:
    staging = StepStaging()
    staging.add("gpu", torch.tensor([1.0, 2.0], device="cuda"))
    staging.add("cpu", torch.tensor(3.0))  # read when added: a CPU value stalls nothing
    staging.add("gpu0d", torch.tensor(4.0, device="cuda"))
    staging.add("n", 5)
    pending = staging.seal()
    assert len(pending.host) == 1 and all(h.device.type == "cpu" for h in pending.host)
    assert pending.wait() == {"gpu": [1.0, 2.0], "cpu": [3.0], "gpu0d": [4.0], "n": [5.0]}
