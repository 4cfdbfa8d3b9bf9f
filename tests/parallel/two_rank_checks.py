"""Two CPU ranks (gloo) for test_parallel_units.py, one launch for three checkpoint checks:
`python two_rank_checks.py DIR RANK` for RANK in 0, 1 (MASTER_ADDR / MASTER_PORT in the environment).

1. Warm start (a curriculum stage) of FSDP2-sharded adapters: each rank takes its rows of the adapters
   and AdamW moments from DIR/plain (a 1-process checkpoint) and from DIR/sharded (written here by both
   ranks, as a 2-rank FSDP2 stage would), takes one AdamW step, and rank 0 writes the full results to
   DIR/result-{plain,sharded}.safetensors.
2. A full disk on rank 1 only (RLIMIT_FSIZE: its tensor file cannot be written) while both ranks write
   DIR/run/checkpoints/step-000006: each rank records the error it got and how long it took to
   DIR/full-disk-rank-R.json.
3. A kill while 2 ranks write: step-000004 is complete, then rank 0 is SIGKILLed while writing
   step-000008, after both ranks' tensor files and before train_state.json / meta.json (rank 1 is then
   stuck in a collective; the test kills it).

The stage fixtures below are also the 1-process reference the test computes.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh


class Adapters(torch.nn.Module):
    """Two adapter-shaped matrices whose 5 and 7 rows split unevenly over 2 ranks."""

    def __init__(self) -> None:
        super().__init__()
        self.lora_A = torch.nn.Parameter(torch.zeros(5, 3))
        self.lora_B = torch.nn.Parameter(torch.zeros(7, 5))


def previous_stage() -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    """The previous stage's adapters and AdamW moments (after 3 steps), by parameter name."""
    g = torch.Generator().manual_seed(3)
    weights = {"lora_A": torch.randn(5, 3, generator=g), "lora_B": torch.randn(7, 5, generator=g)}
    moments = {
        name: {
            "step": torch.tensor(3.0),
            "exp_avg": torch.randn(w.shape, generator=g),
            "exp_avg_sq": torch.rand(w.shape, generator=g),
        }
        for name, w in weights.items()
    }
    return weights, moments


def stage_module(mesh: DeviceMesh | None = None) -> tuple[Adapters, torch.optim.Optimizer]:
    """The previous stage as a live module + AdamW at lr 0.5 (FSDP2-sharded over `mesh` if given)."""
    from torch.distributed.tensor import Shard, distribute_tensor

    weights, moments = previous_stage()
    module = Adapters()
    with torch.no_grad():
        for name, value in weights.items():
            getattr(module, name).copy_(value)
    if mesh is not None:
        from torch.distributed.fsdp import fully_shard

        fully_shard(module, mesh=mesh)
    opt = torch.optim.AdamW(module.parameters(), lr=0.5, weight_decay=0.0)
    for name, entry in moments.items():
        param = getattr(module, name)
        opt.state[param] = {
            k: distribute_tensor(v, mesh, [Shard(0)]) if mesh is not None and v.ndim else v
            for k, v in entry.items()
        }
    return module, opt


def stage_grads() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    return [torch.randn(5, 3, generator=g), torch.randn(7, 5, generator=g)]


def warm_start_and_step(module: torch.nn.Module, source: Path, grads: list[torch.Tensor]) -> dict:
    """Warm start `module` from `source`, one AdamW step (lr 0.1) with `grads`; its params and moments."""
    from ltxdist.checkpoint import TorchTrainable, load_checkpoint

    opt = torch.optim.AdamW(module.parameters(), lr=0.1, weight_decay=0.0)
    load_checkpoint(source, TorchTrainable(module, opt), with_train_state=False)
    assert opt.param_groups[0]["lr"] == 0.1  # the new stage keeps its own schedule
    for p, g in zip(module.parameters(), grads, strict=True):
        p.grad = g
    opt.step()
    out = {}
    for i, p in enumerate(module.parameters()):
        out[f"param{i}"] = p.detach()
        out.update({f"{k}{i}": opt.state[p][k] for k in ("exp_avg", "exp_avg_sq")})
    return out


def _warm_start(rank: int, mesh: DeviceMesh, folder: Path) -> None:
    from safetensors.torch import save_file
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard, distribute_tensor

    from ltxdist.checkpoint import TorchTrainable, TrainState, save_checkpoint

    save_checkpoint(folder / "sharded", TorchTrainable(*stage_module(mesh)), TrainState(step=3))
    for source in ("plain", "sharded"):
        model = Adapters()
        fully_shard(model, mesh=mesh)
        grads = [distribute_tensor(g, mesh, [Shard(0)]) for g in stage_grads()]
        result = warm_start_and_step(model, folder / source, grads)
        full = {k: v.full_tensor() for k, v in result.items()}  # collective: every rank
        if rank == 0:
            save_file(full, str(folder / f"result-{source}.safetensors"))


def _state(step: int, mesh: DeviceMesh) -> Any:
    from torch.distributed.tensor import Shard, distribute_tensor

    from ltxdist.checkpoint import TorchTrainable

    module = torch.nn.Module()
    full = torch.arange(10.0).reshape(5, 2) + step  # 5 rows: 3 on rank 0, 2 on rank 1
    module.w = torch.nn.Parameter(distribute_tensor(full, mesh, [Shard(0)]))
    return TorchTrainable(module, None)


def _full_disk_on_rank_1(rank: int, mesh: DeviceMesh, run: Path) -> None:
    from ltxdist.checkpoint import TrainState, save_checkpoint

    target = run / "checkpoints" / "step-000006"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    if rank == 1:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, hard))  # smaller than any tensor file
    start = time.monotonic()
    try:
        save_checkpoint(target, _state(6, mesh), TrainState(step=6))
        outcome = {"error": None}
    except OSError as exc:
        outcome = {"error": str(exc), "errno": exc.errno, "type": type(exc).__name__}
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    outcome["seconds"] = time.monotonic() - start
    (run / f"full-disk-rank-{rank}.json").write_text(json.dumps(outcome))


def _write_then_die(rank: int, mesh: DeviceMesh, run: Path) -> None:
    import ltxdist.checkpoint.checkpointer as cp
    from ltxdist.checkpoint import TrainState

    cp.save_checkpoint(run / "checkpoints" / "step-000004", _state(4, mesh), TrainState(step=4))
    if rank == 0:

        def die(*args: Any, **kwargs: Any) -> None:  # the first JSON file, after every tensor file
            os.kill(os.getpid(), signal.SIGKILL)

        cp.write_json_atomic = die
    cp.save_checkpoint(run / "checkpoints" / "step-000008", _state(8, mesh), TrainState(step=8))


def main() -> None:
    from datetime import timedelta

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    folder, rank = Path(sys.argv[1]), int(sys.argv[2])
    # A TCP store (not a file store: rank 1's file-size limit would break it); a timeout far above what
    # a prompt failure takes, so waiting for it is visible.
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=120))
    mesh = init_device_mesh("cpu", (2,))
    _warm_start(rank, mesh, folder)
    _full_disk_on_rank_1(rank, mesh, folder / "run")
    _write_then_die(rank, mesh, folder / "run")


if __name__ == "__main__":
    main()
