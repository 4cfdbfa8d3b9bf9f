"""Start a run from another run's checkpoint: adapters and AdamW moments, not steps or schedule.

Used between curriculum stages: the next stage keeps what the LoRA learned and the optimizer's running
moments, but runs its own step count and learning-rate schedule from step 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ltxdist.training.checkpoint_io import SafetensorsCheckpointIO


class WarmStartError(ValueError):
    pass


@torch.no_grad()
def warm_start(module: torch.nn.Module, optimizer: torch.optim.Optimizer, path: str | Path) -> None:
    checkpoint: dict[str, Any] = SafetensorsCheckpointIO().load_checkpoint(Path(path))
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
        params[name].copy_(value.to(params[name].dtype))
    # AdamW moments only: this run keeps its own lr, betas and schedule (param_groups stay as built).
    # Parameters that never had a gradient (e.g. audio adapters in a video-only stage) have no state.
    state = optimizer.state_dict()
    order = state["param_groups"][0]["params"]
    group_params = optimizer.param_groups[0]["params"]
    loaded = checkpoint["optimizer_states"][0]["state"]
    for index, moments in loaded.items():
        if index not in order or moments["exp_avg"].shape != group_params[order.index(index)].shape:
            raise WarmStartError(f"lora.init_from={path}: optimizer state is for a different parameter set")
    state["state"] = loaded
    optimizer.load_state_dict(state)
