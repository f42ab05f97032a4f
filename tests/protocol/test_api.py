"""The public surface of ``trainvitals.protocol``: its curated names and its stdlib-only imports."""

from __future__ import annotations

import json
import subprocess
import sys

import trainvitals.protocol as protocol

EXPECTED_ALL = {
    "MAX_ENTRIES", "MAX_NAME_LENGTH", "PROTOCOL_VERSION",
    "Ack", "Batch", "ClipEvent", "Error", "Message", "NonFiniteOrigin", "ProtocolError",
    "Record", "RunEnd",
    "RunStart", "Step", "TensorStats",
    "check_name", "decode", "encode", "encode_batch", "float_from_wire", "float_to_wire",
}


def test_all_is_exactly_the_curated_set() -> None:
    assert set(protocol.__all__) == EXPECTED_ALL
    assert len(protocol.__all__) == len(EXPECTED_ALL)  # no duplicates


def test_every_name_in_all_exists() -> None:
    for name in protocol.__all__:
        assert hasattr(protocol, name), name
        assert getattr(protocol, name) is not None, name


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from trainvitals.protocol import *", namespace)
    assert set(namespace) - {"__builtins__"} == EXPECTED_ALL


def test_submodule_all_lists_exist() -> None:
    from trainvitals.protocol import codec, errors, floats, messages

    for module in (codec, errors, floats, messages):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"
    # everything the package re-exports from codec is in codec's own __all__
    assert {"MAX_ENTRIES", "MAX_NAME_LENGTH", "PROTOCOL_VERSION", "check_name", "decode",
            "encode"} <= set(codec.__all__)


def test_constants() -> None:
    assert protocol.PROTOCOL_VERSION == 1
    assert protocol.MAX_NAME_LENGTH == 200
    assert protocol.MAX_ENTRIES == 1000


def test_records_and_messages_are_frozen() -> None:
    import dataclasses

    import pytest

    step = protocol.Step(run="r", session="s", seq=1, step=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        step.loss = 1.0  # type: ignore[misc]
    assert issubclass(protocol.ProtocolError, ValueError)


PROBE = """
import json, sys
before = set(sys.modules)
import trainvitals.protocol
from trainvitals.protocol import decode, encode, Step
decode(encode(Step(run="r", session="s", seq=1, step=0, loss=float("nan"))))
print(json.dumps({"new": sorted(set(sys.modules) - before),
                  "stdlib": sorted(sys.stdlib_module_names)}))
"""

FORBIDDEN = ("torch", "numpy", "fastapi", "starlette", "websockets", "pydantic",
             "pydantic_settings", "uvicorn", "plotly", "trainvitals.server",
             "trainvitals.trainer_plugin", "trainvitals.demo", "trainvitals.frontend",
             "trainvitals.cli")


def test_protocol_imports_only_the_stdlib_and_itself() -> None:
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    new, stdlib = report["new"], set(report["stdlib"])
    assert "trainvitals.protocol" in new  # the probe did import it fresh
    for module in new:
        for banned in FORBIDDEN:
            assert module != banned and not module.startswith(banned + "."), module
    ours = {m for m in new if m.split(".")[0] == "trainvitals"}
    assert ours <= {"trainvitals", "trainvitals.protocol", "trainvitals.protocol.codec",
                    "trainvitals.protocol.errors", "trainvitals.protocol.floats",
                    "trainvitals.protocol.messages"}, ours
    foreign = {m for m in new if m.split(".")[0] not in stdlib | {"trainvitals"}}
    assert not foreign, foreign
