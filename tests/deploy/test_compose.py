"""docker-compose.yml for real: images built from the Dockerfiles, the stack started with
podman-compose, a (CPU) trainer streaming into the containerised server, and the data
surviving new containers through the named volume. Plus ``docker-compose config`` checks."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml  # type: ignore[import-untyped]

pytestmark = pytest.mark.deploy

ROOT = Path(__file__).resolve().parents[2]
STEPS = 20  # TEST_STEPS of the compose fixture: the trainer's run is compose-exp


def docker_compose_config(env_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker-compose", "-f", "docker-compose.yml", "--env-file",
                           str(env_file), "config"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)


def test_compose_file_validates_with_docker_compose(podman_env: dict[str, str],
                                                    tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("TRAINVITALS_INGEST_TOKEN=a-token-for-validation\n")
    quiet = subprocess.run(["docker-compose", "-f", "docker-compose.yml", "--env-file",
                            str(env_file), "config", "-q"], cwd=ROOT, capture_output=True,
                           text=True, timeout=60, check=False)
    assert quiet.returncode == 0, quiet.stderr
    config: dict[str, Any] = yaml.safe_load(docker_compose_config(env_file).stdout)
    server, trainer = config["services"]["server"], config["services"]["trainer"]
    assert server["environment"]["TRAINVITALS_INGEST_TOKEN"] == "a-token-for-validation"
    assert trainer["environment"]["TRAINVITALS_TOKEN"] == "a-token-for-validation"
    assert trainer["environment"]["TRAINVITALS_SERVER"] == "ws://server:8765"
    assert server["ports"] == ["127.0.0.1:8765:8765/tcp"]  # published on loopback only
    assert server["volumes"] == ["trainvitals-data:/data:rw"]
    assert "trainvitals-data" in config["volumes"]
    assert "/healthz" in " ".join(server["healthcheck"]["test"])
    assert trainer["depends_on"] == {"server": {"condition": "service_healthy"}}
    (gpu,) = trainer["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]


def test_compose_refuses_to_start_without_a_token(podman_env: dict[str, str]) -> None:
    """.env.example as it is committed: the token is empty, and compose says what to do."""
    done = docker_compose_config(ROOT / ".env.example")
    assert done.returncode != 0
    assert "set TRAINVITALS_INGEST_TOKEN in .env (see .env.example)" in done.stderr


@pytest.mark.slow
def test_stack_starts_streams_and_keeps_data_in_the_volume(compose: Any) -> None:
    api = f"http://127.0.0.1:{compose.port}"
    compose("up", "-d")
    trainer, server = compose.container("trainer"), compose.container("server")
    # podman < 4.6 cannot wait for service_healthy: the trainer itself waits for /healthz
    status = compose.podman("wait", trainer, timeout=900).stdout.strip()
    logs = compose.podman("logs", trainer).stdout + compose.podman("logs", trainer).stderr
    assert status == "0", logs
    assert "compose-exp: finished after 20 steps; all records stored" in logs

    before = _run(api, "compose-exp")
    assert (before["status"], before["steps"], before["last_step"]) == ("finished", STEPS,
                                                                        STEPS - 1)
    assert compose.podman("healthcheck", "run", server).returncode == 0  # the image's check
    assert compose.podman("exec", server, "id", "-u").stdout.strip() == "10001"  # not root
    no_torch = compose.podman("exec", server, "python3", "-c",
                              "import importlib.util as u; print(u.find_spec('torch'))")
    assert no_torch.stdout.strip() == "None"
    metrics = httpx.get(f"{api}/metrics").text
    assert f"trainvitals_ingest_records_total {STEPS + 2}.0" in metrics  # start, steps, end

    compose("down")  # containers gone; the named volume stays
    assert compose.podman("ps", "-a", "-q", "--filter", f"name={compose.project}").stdout == ""
    compose("up", "-d", "server")
    after = _run(api, "compose-exp", wait=120)
    assert {k: after[k] for k in ("status", "steps", "last_step", "config")} == \
           {k: before[k] for k in ("status", "steps", "last_step", "config")}
    loss = httpx.get(f"{api}/api/runs/{after['id']}/series", params={"name": "loss"}).json()
    assert loss["series"][0]["steps"] == list(range(STEPS))


def _run(api: str, name: str, wait: float = 0) -> dict[str, Any]:
    end = time.monotonic() + wait
    while True:
        try:
            runs = httpx.get(f"{api}/api/runs", timeout=5).json()["runs"]
            break
        except httpx.TransportError:
            assert time.monotonic() < end, f"server at {api} did not come up"
            time.sleep(0.5)
    (run,) = [r for r in runs if r["name"] == name]
    result: dict[str, Any] = run
    return result
