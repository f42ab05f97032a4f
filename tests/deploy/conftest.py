"""Fixtures for the container tests: podman settings, the offline base image, a wheelhouse
served on 127.0.0.1, and ``podman-compose`` on the real compose file plus the test override.

Set up with ``scripts/install-deploy`` first (``scripts/test`` does). Without podman these
tests are skipped, unless ``TRAINVITALS_REQUIRE_DEPLOY=1`` (set by ``scripts/test``, so CI
fails instead of skipping).
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "deploy"
BASE_IMAGE = "localhost/debian-py:bookworm"
COMPOSE = [Path(sys.executable).parent / "podman-compose"]


def _missing() -> list[str]:
    tools = ["podman", "docker-compose", str(COMPOSE[0])]
    gone = [t for t in tools if shutil.which(t) is None]
    if not (CACHE / "wheels" / ".complete").exists():
        gone.append(f"wheelhouse {CACHE / 'wheels'}")
    return gone


@pytest.fixture(scope="session")
def podman_env() -> dict[str, str]:
    """Environment for podman: runc and working ulimits (see containers.conf)."""
    missing = _missing()
    if missing:
        message = f"deploy tests need scripts/install-deploy first (missing: {missing})"
        if os.environ.get("TRAINVITALS_REQUIRE_DEPLOY") == "1":
            pytest.fail(message)
        pytest.skip(message)
    env = {**os.environ, "CONTAINERS_CONF": str(ROOT / "tests" / "deploy" / "containers.conf")}
    image = subprocess.run(["podman", "image", "exists", BASE_IMAGE], env=env, check=False)
    if image.returncode != 0:
        pytest.fail(f"base image {BASE_IMAGE} missing: run scripts/install-deploy")
    return env



@pytest.fixture(scope="session")
def wheels_url() -> Iterator[str]:
    """The wheelhouse over HTTP on 127.0.0.1: image builds (host network) install from it."""
    handler = functools.partial(_QuietHandler, directory=str(CACHE / "wheels"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@dataclass
class Compose:
    """``podman-compose`` on docker-compose.yml plus the test override, one project."""

    project: str
    env: dict[str, str]
    port: int

    def __call__(self, *args: str, timeout: float = 600,
                 check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [*map(str, COMPOSE), "-p", self.project, "--env-file", self.env["TEST_ENV_FILE"],
               "-f", str(ROOT / "docker-compose.yml"),
               "-f", str(ROOT / "tests" / "deploy" / "compose.test.yml"), *args]
        done = subprocess.run(cmd, cwd=ROOT, env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({done.returncode}):\n"
                                 f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    def podman(self, *args: str, timeout: float = 120,
               check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed:\n{done.stderr[-3000:]}")
        return done

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"


@pytest.fixture(scope="session")
def compose(podman_env: dict[str, str], wheels_url: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Compose]:
    """A compose project with its images built (server and CPU trainer); removed after,
    containers and volume included."""
    env_file = tmp_path_factory.mktemp("compose") / "test.env"
    env_file.write_text("TRAINVITALS_INGEST_TOKEN=ingest-token-for-compose\n")
    port = free_port()
    env = {**podman_env, "TEST_ENV_FILE": str(env_file), "TEST_BASE_IMAGE": BASE_IMAGE,
           "TEST_WHEELS_URL": wheels_url, "TEST_PORT": str(port), "TEST_STEPS": "20"}
    project = Compose(f"tvtest{os.getpid()}", env, port)
    # host network: the build reaches the wheelhouse on 127.0.0.1; docker format keeps the
    # Dockerfile's HEALTHCHECK (OCI images have no field for it)
    project("--podman-build-args", "--network=host --format=docker", "build", timeout=1500)
    yield project
    project("down", "-v", check=False)
