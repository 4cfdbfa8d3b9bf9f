"""Two CPU ranks (gloo) for test_parallel_units.py, one launch for two checks:
`python two_rank_checks.py DIR RANK` for RANK in 0, 1.

1. Warm start (a curriculum stage) of FSDP2-sharded adapters: each rank takes its rows of the adapters
   and AdamW moments from DIR/plain (a 1-process checkpoint) and from DIR/sharded (written here by both
   ranks, as a 2-rank FSDP2 stage would), takes one AdamW step, and rank 0 writes the full results to
   DIR/result-{plain,sharded}.safetensors.
2. A kill while 2 ranks write a sharded checkpoint: both write DIR/run/checkpoints/step-000004, then
   rank 0 is SIGKILLed while writing step-000008, after its shard file and tensors.safetensors and
   before state.json / meta.json (rank 1 is then stuck in a barrier; the test kills it).

The stage fixtures below are also the 1-process reference the test computes.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

Broadcast = Callable[[Any], Any]
Barrier = Callable[[], None]


class Adapters(torch.nn.Module):
    """Two adapter-shaped matrices whose 5 and 7 rows split unevenly over 2 ranks."""

    def __init__(self) -> None:
        super().__init__()
        self.lora_A = torch.nn.Parameter(torch.zeros(5, 3))
        self.lora_B = torch.nn.Parameter(torch.zeros(7, 5))


def previous_stage() -> dict:
    """A checkpoint of the previous stage: adapters and AdamW moments after 3 steps, at lr 0.5."""
    g = torch.Generator().manual_seed(3)
    weights = {"lora_A": torch.randn(5, 3, generator=g), "lora_B": torch.randn(7, 5, generator=g)}
    state = {
        i: {
            "step": torch.tensor(3.0),
            "exp_avg": torch.randn(w.shape, generator=g),
            "exp_avg_sq": torch.rand(w.shape, generator=g),
        }
        for i, w in enumerate(weights.values())
    }
    groups = [{"lr": 0.5, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "params": [0, 1]}]
    return {"state_dict": weights, "optimizer_states": [{"state": state, "param_groups": groups}]}


def stage_grads() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    return [torch.randn(5, 3, generator=g), torch.randn(7, 5, generator=g)]


def warm_start_and_step(module: torch.nn.Module, source: Path, grads: list[torch.Tensor]) -> dict:
    """Warm start `module` from `source`, one AdamW step (lr 0.1) with `grads`; its params and moments."""
    from ltxdist.training.warm_start import warm_start

    opt = torch.optim.AdamW(module.parameters(), lr=0.1, weight_decay=0.0)
    warm_start(module, opt, source)
    assert opt.param_groups[0]["lr"] == 0.1  # the new stage keeps its own schedule
    for p, g in zip(module.parameters(), grads, strict=True):
        p.grad = g
    opt.step()
    out = {}
    for i, p in enumerate(module.parameters()):
        out[f"param{i}"] = p.detach()
        out.update({f"{k}{i}": opt.state[p][k] for k in ("exp_avg", "exp_avg_sq")})
    return out


def _warm_start(rank: int, mesh: DeviceMesh, folder: Path, broadcast: Broadcast, barrier: Barrier) -> None:
    from safetensors.torch import save_file
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard, distribute_tensor

    from ltxdist.training.checkpoint_io import save_sharded_checkpoint

    previous = previous_stage()
    sharded = {
        "state_dict": {k: distribute_tensor(v, mesh, [Shard(0)]) for k, v in previous["state_dict"].items()},
        "optimizer_states": previous["optimizer_states"],
    }
    for entry in sharded["optimizer_states"][0]["state"].values():
        for key in ("exp_avg", "exp_avg_sq"):
            entry[key] = distribute_tensor(entry[key], mesh, [Shard(0)])
    save_sharded_checkpoint(
        sharded, folder / "sharded", rank=rank, world_size=2, broadcast=broadcast, barrier=barrier
    )
    for source in ("plain", "sharded"):
        model = Adapters()
        fully_shard(model, mesh=mesh)
        grads = [distribute_tensor(g, mesh, [Shard(0)]) for g in stage_grads()]
        result = warm_start_and_step(model, folder / source, grads)
        full = {k: v.full_tensor() for k, v in result.items()}  # collective: every rank
        if rank == 0:
            save_file(full, str(folder / f"result-{source}.safetensors"))


def _write_then_die(rank: int, mesh: DeviceMesh, run: Path, broadcast: Broadcast, barrier: Barrier) -> None:
    from torch.distributed.tensor import Shard, distribute_tensor

    import ltxdist.training.checkpoint_io as cio

    def write(step: int) -> None:
        full = torch.arange(10.0).reshape(5, 2) + step  # 5 rows: 3 on rank 0, 2 on rank 1
        state = {"state_dict": {"w": distribute_tensor(full, mesh, [Shard(0)])}, "global_step": step}
        path = run / "checkpoints" / f"step-{step:06d}"
        cio.save_sharded_checkpoint(
            state, path, rank=rank, world_size=2, broadcast=broadcast, barrier=barrier
        )

    write(4)
    if rank == 0:
        real, written = cio.save_safetensors_atomic, []

        def die_after_second_file(*args: Any, **kwargs: Any) -> None:
            real(*args, **kwargs)
            written.append(args[1])
            if len(written) == 2:
                os.kill(os.getpid(), signal.SIGKILL)

        cio.save_safetensors_atomic = die_after_second_file
    write(8)


def main() -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    folder, rank = Path(sys.argv[1]), int(sys.argv[2])
    dist.init_process_group("gloo", init_method=f"file://{folder}/init", rank=rank, world_size=2)
    mesh = init_device_mesh("cpu", (2,))

    def broadcast(obj: Any) -> Any:
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    _warm_start(rank, mesh, folder, broadcast, dist.barrier)
    _write_then_die(rank, mesh, folder / "run", broadcast, dist.barrier)


if __name__ == "__main__":
    main()
