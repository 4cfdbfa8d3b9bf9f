"""Start a run from another run's checkpoint: adapters and AdamW moments, not steps or schedule.

Used between curriculum stages: the next stage keeps what the LoRA learned and the optimizer's running
moments, but runs its own step count and learning-rate schedule from step 0.

Sharding: under FSDP2 every rank copies only its own rows of each adapter and of each AdamW moment
(read straight from the checkpoint's pieces or from a full tensor, whatever layout wrote it), and the
moments are wrapped like their parameters, as a resume does (parallel/fsdp2_strategy.py). DeepSpeed
ZeRO keeps the trainable state in its own flat partitions, which this does not write into: warm start
refuses it, naming the flags, rather than train from a silently ignored start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# The resume path's conversion of a saved AdamW state to this rank's rows (reused, not copied).
from ltxdist.parallel.fsdp2_strategy import local_optimizer_state
from ltxdist.parallel.shard_rows import local_slice, local_tensor
from ltxdist.training.checkpoint_io import read_checkpoint, read_part


class WarmStartError(ValueError):
    pass


def check_warm_start_supported(parallel_name: str, what: str) -> None:
    """Fail before any model is built when `what` (a curriculum, or lora.init_from) would warm start
    under a parallel config that cannot."""
    if parallel_name.startswith("deepspeed"):
        raise WarmStartError(
            f"{what} carries the LoRA and AdamW moments into a new run, which parallel={parallel_name} does "
            "not support (DeepSpeed keeps them in its own partitions); use parallel=fsdp2, ddp or single"
        )


def _uses_deepspeed(module: torch.nn.Module) -> bool:
    # ZeRO-3 parameters carry ds_id, ZeRO-1/2 ones a link (_hp_mapping) into the flat fp32 partitions.
    return any(hasattr(p, "ds_id") or hasattr(p, "_hp_mapping") for p in module.parameters())


@torch.no_grad()
def warm_start(module: torch.nn.Module, optimizer: torch.optim.Optimizer, path: str | Path) -> None:
    if _uses_deepspeed(module):
        check_warm_start_supported("deepspeed", f"lora.init_from={path}")
    # Sharded checkpoints stay lazy: each rank reads only the rows it holds.
    checkpoint: dict[str, Any] = read_checkpoint(Path(path), lazy_shards=True)
    adapters = checkpoint["state_dict"]
    own = module.state_dict()
    if set(own) != set(adapters):
        raise WarmStartError(
            f"lora.init_from={path}: its adapters do not match this run's (missing "
            f"{sorted(set(own) - set(adapters))[:3]}, unexpected {sorted(set(adapters) - set(own))[:3]}); "
            "every stage must use the same lora.rank and lora.targets"
        )
    params = dict(module.named_parameters())
    for name, value in adapters.items():
        local = local_tensor(params[name])
        local.copy_(read_part(value, local_slice(params[name])).to(local.dtype))
    # AdamW moments only: this run keeps its own lr, betas and schedule (param_groups stay as built).
    # Parameters that never had a gradient (e.g. audio adapters in a video-only stage) have no state.
    state = optimizer.state_dict()
    order = state["param_groups"][0]["params"]
    group_params = optimizer.param_groups[0]["params"]
    loaded = checkpoint["optimizer_states"][0]["state"]
    for index, moments in loaded.items():
        if index not in order or tuple(moments["exp_avg"].shape) != tuple(
            group_params[order.index(index)].shape
        ):
            raise WarmStartError(f"lora.init_from={path}: optimizer state is for a different parameter set")
    # Per-parameter tensors cut to this rank's rows and wrapped like the parameter (DTensor under FSDP2);
    # whole tensors for unsharded parameters.
    optimizer.load_state_dict(
        local_optimizer_state(optimizer, {"state": loaded, "param_groups": state["param_groups"]})
    )
