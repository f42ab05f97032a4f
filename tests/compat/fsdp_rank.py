"""One rank of a two-rank FSDP2 (``fully_shard``) run on the CPU (gloo), reporting to a server.

Run as ``python -m tests.compat.fsdp_rank RANK PORT SERVER TOKEN RUN SPOOL``. At ``BAD_STEP``
rank ``BAD_RANK``'s batch has one NaN input: its forward and loss are NaN, and the gradient
reduce-scatter carries the NaN into every rank's shard of the gradients.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from torch import nn

from trainvitals import Monitor

STEPS, BAD_RANK, BAD_STEP = 12, 1, 7


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 32), nn.GELU())
        self.head = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def main(rank: int, port: int, server: str, token: str, run: str, spool: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    try:
        mesh = init_device_mesh("cpu", (2,))
        torch.manual_seed(0)
        model = Net()
        mon = Monitor(run, server=server, token=token, rank=rank, world_size=2, spool=spool)
        fully_shard(model.body, mesh=mesh)
        fully_shard(model.head, mesh=mesh)
        fully_shard(model, mesh=mesh)
        # after sharding: fully_shard replaces the parameters (by DTensors), so a watch made
        # before it would hook parameters that no longer get gradients
        mon.watch(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        mon.watch_optimizer(optimizer, model)
        gen = torch.Generator().manual_seed(100 + rank)
        for step in range(STEPS):
            x, y = torch.randn(4, 8, generator=gen), torch.randn(4, 1, generator=gen)
            if rank == BAD_RANK and step == BAD_STEP:
                x[2, 5] = float("nan")
            out = model(x)
            mon.tensor("out", out)
            loss = nn.functional.mse_loss(out, y)
            loss.backward()
            norm = nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # a DTensor
            optimizer.step()
            optimizer.zero_grad()
            mon.log_step(step, loss=loss, grad_norm=norm, lr=1e-3)
        mon.close(timeout=60)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    a = sys.argv[1:]
    main(int(a[0]), int(a[1]), a[2], a[3], a[4], a[5])
