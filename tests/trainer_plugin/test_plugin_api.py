"""The curated public names of ``trainvitals`` and ``trainvitals.trainer_plugin``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import trainvitals
import trainvitals.trainer_plugin as plugin


def test_plugin_all_is_curated_and_importable() -> None:
    assert sorted(plugin.__all__) == [
        "CallTimes", "DeliveryStats", "Monitor", "NonFiniteLossError", "attach",
        "exp_overflow_log", "time_watch"]
    for name in plugin.__all__:
        assert getattr(plugin, name) is not None, name


def test_top_level_names_are_the_plugin_s() -> None:
    assert sorted(trainvitals.__all__) == ["Monitor", "NonFiniteLossError", "__version__",
                                           "attach"]
    assert trainvitals.Monitor is plugin.Monitor
    assert trainvitals.attach is plugin.attach
    assert trainvitals.NonFiniteLossError is plugin.NonFiniteLossError
    assert trainvitals.__version__ == "0.1.0"
    with pytest.raises(AttributeError, match="has no attribute 'Sender'"):
        trainvitals.Sender  # noqa: B018


def _imported_after(code: str) -> dict[str, bool]:
    probe = (f"import sys, json\n{code}\n"
             "print(json.dumps({m: m in sys.modules for m in "
             "('torch', 'trainvitals.trainer_plugin', 'trainvitals.server', 'fastapi', "
             "'uvicorn')}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=120)
    result: dict[str, bool] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_import_trainvitals_alone_does_not_import_torch() -> None:
    assert _imported_after("import trainvitals; trainvitals.__version__") == {
        "torch": False, "trainvitals.trainer_plugin": False, "trainvitals.server": False,
        "fastapi": False, "uvicorn": False}


def test_the_plugin_loads_torch_on_first_use_and_never_the_server() -> None:
    assert _imported_after("import trainvitals; trainvitals.Monitor") == {
        "torch": True, "trainvitals.trainer_plugin": True, "trainvitals.server": False,
        "fastapi": False, "uvicorn": False}
