"""The ordered application of parallelism concerns to the transformer, and the Lightning strategy."""

from __future__ import annotations

from typing import Any

import torch

from ltxdist.parallel.activation_checkpointing import apply_activation_checkpointing


def parallelize_transformer(
    model: torch.nn.Module, parallel_cfg: Any, *, gradient_checkpointing: bool
) -> torch.nn.Module:
    """Order matters: checkpointing wraps each block first, so that compile and sharding (added per
    block after it) see the checkpointed block as their unit."""
    if gradient_checkpointing:
        apply_activation_checkpointing(model)
    return model


def lightning_strategy(parallel_cfg: Any) -> Any:
    if parallel_cfg.name == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(process_group_backend=parallel_cfg.process_group_backend)
    return "auto"
