"""``trainvitals demo``: a real server plus π³-style runs that show what trainvitals catches.

The runs use only the public plugin API, exactly as a user would: a ``trainvitals.Monitor``
per run and, on the Accelerate trainer of ``accelerate_train``, one ``trainvitals.attach`` call
(the zero-edit path; ``train.train`` is the same trainer calling the Monitor by hand).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

from trainvitals import Monitor
from trainvitals.demo.accelerate_train import train_accelerate
from trainvitals.demo.train import DemoConfig, DemoResult, Progress
from trainvitals.server import ServerThread, Settings
from trainvitals.server.security import new_token

__all__ = ["VARIANTS", "run_demo", "variant_config"]

VARIANTS = {
    "exp": "exp depth head; one bad update (log-depth +5.5) pushes the loss past the ×0 clip "
           "at 10 and the run silently stops learning",
    "overflow": "exp depth head; a larger spike overflows exp to Inf and the trainer aborts",
    "softplus": "softplus depth head, same spike: the run recovers",
    "exp_clamp": "exp of a clamped pre-activation (π³X style), same spike",
}


def variant_config(variant: str, steps: int | None = None) -> DemoConfig:
    """The demo configuration behind a variant name."""
    if variant not in VARIANTS:
        raise SystemExit(f"trainvitals demo: unknown variant {variant!r}; "
                         f"choose from {', '.join(VARIANTS)}")
    config = DemoConfig(depth_activation="exp" if variant == "overflow" else variant,  # type: ignore[arg-type]
                        overflow=variant == "overflow",
                        # one thread: the server shares this process, and two OpenMP threads
                        # spin-waiting on a small machine made a run several times slower
                        num_threads=1)
    return config if steps is None else dataclasses.replace(config, steps=steps)


def run_demo(*, port: int, data_dir: Path, variants: Sequence[str], steps: int | None,
             keep_serving: bool) -> int:
    """Serve, train each variant against the server, then keep serving unless told not to."""
    configs = {v: variant_config(v, steps) for v in variants}
    settings = Settings(host="127.0.0.1", port=port, data_dir=data_dir,
                        ingest_token=new_token())
    server = _start(settings)
    print(f"\ntrainvitals demo — dashboard: {server.http_url}/   (data in {data_dir})\n",
          flush=True)
    stamp = time.strftime("%m%d-%H%M%S")
    try:
        for variant, config in configs.items():
            _one_run(f"demo-{variant}-{stamp}", variant, config, server, settings)
        print(f"\nDone. Open {server.http_url}/ to see the runs side by side.", flush=True)
        if keep_serving:
            print("The server keeps running; Ctrl+C stops it.", flush=True)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        print("\nStopping.", flush=True)
    finally:
        server.stop()
    return 0


def _start(settings: Settings) -> ServerThread:
    try:
        return ServerThread(settings).start()
    except SystemExit:  # port taken: any free port will do for a demo
        print(f"(port {settings.port} is busy; using a free one)", flush=True)
        return ServerThread(settings.model_copy(update={"port": 0})).start()


def _one_run(name: str, variant: str, config: DemoConfig, server: ServerThread,
             settings: Settings) -> DemoResult:
    print(f"▶ {name}: {VARIANTS[variant]}", flush=True)
    started = time.monotonic()
    with Monitor(name, server=server.ws_url, token=settings.ingest_token,
                 config=dataclasses.asdict(config)) as monitor:
        result = train_accelerate(config, monitor, progress=_progress(config.steps))
        monitor.close(status=result.status, reason=result.reason)
    took = time.monotonic() - started
    print(f"  {name}: {result.status} after {result.steps_run} steps in {took:.0f} s"
          + (f" — {result.reason}" if result.reason else ""), flush=True)
    return result


def _progress(total: int) -> Progress:
    every = max(total // 5, 1)

    def report(step: int, values: dict[str, float]) -> None:
        if step % every == 0:
            keys = ("loss_raw", "loss_used", "grad_norm_pre")  # what the stall story needs
            shown = "  ".join(f"{k} {values[k]:.4g}" for k in keys if k in values)
            print(f"  step {step:>4}/{total}  {shown}", flush=True)

    return report
