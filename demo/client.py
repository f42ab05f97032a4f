"""``trainvitals train-demo``: the demo runs as a pure client of a server somewhere else.

What the example trainer of ``docker-compose.yml`` runs: it waits until the server answers
``/healthz``, then trains the demo variants against it through the public ``Monitor`` API,
exactly as a user's training job would. The exit status says whether every record arrived.
"""

from __future__ import annotations

import dataclasses
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import TextIO

from trainvitals import Monitor
from trainvitals.demo.launch import VARIANTS, variant_config
from trainvitals.demo.train import train

__all__ = ["health_url", "run_client", "wait_healthy"]


def health_url(server: str) -> str:
    """``ws://host:port[/ws/ingest]`` (or http) → ``http://host:port/healthz``."""
    url = server.rstrip("/").removesuffix("/ws/ingest")
    for ws, http in (("ws://", "http://"), ("wss://", "https://")):
        if url.startswith(ws):
            url = http + url[len(ws):]
    if not url.startswith(("http://", "https://")):
        url = "http://" + url
    return url + "/healthz"


def wait_healthy(server: str, timeout: float, out: TextIO) -> None:
    """Poll the server's ``/healthz`` until it answers 200; SystemExit after ``timeout`` s.

    Compose's ``depends_on: condition: service_healthy`` does the same where the engine
    supports it; asking ourselves also covers engines that do not, and restarts.
    """
    url, end, said = health_url(server), time.monotonic() + timeout, False
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            problem = str(exc)
        if time.monotonic() > end:
            raise SystemExit(f"trainvitals train-demo: server not healthy at {url} after "
                             f"{timeout:.0f} s ({problem})")
        if not said:
            print(f"waiting for {url} …", file=out, flush=True)
            said = True
        time.sleep(1.0)


def run_client(server: str, token: str | None, variants: Sequence[str], *,
               steps: int | None, prefix: str | None, wait: float, out: TextIO,
               close_timeout: float = 60.0) -> int:
    """Train each variant against ``server``; 0 when every run was delivered in full
    (each run waits up to ``close_timeout`` seconds at its end for the last acks)."""
    configs = {v: variant_config(v, steps) for v in variants}  # unknown names fail first
    wait_healthy(server, wait, out)
    prefix = prefix or f"demo-{socket.gethostname()}-{time.strftime('%m%d-%H%M%S')}"
    incomplete = 0
    for variant, config in configs.items():
        name = f"{prefix}-{variant}"
        print(f"▶ {name}: {VARIANTS[variant]}", file=out, flush=True)
        monitor = Monitor(name, server=server, token=token, config=dataclasses.asdict(config))
        result = train(config, monitor)
        stats = monitor.close(status=result.status, reason=result.reason,
                              timeout=close_timeout)
        delivered = stats.dropped == 0 and monitor.flush(0)
        incomplete += not delivered
        print(f"  {name}: {result.status} after {result.steps_run} steps; "
              + ("all records stored" if delivered else
                 f"INCOMPLETE: {stats.dropped} record(s) dropped or unacknowledged"),
              file=out, flush=True)
    return 1 if incomplete else 0
