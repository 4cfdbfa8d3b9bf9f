"""Per-block activation checkpointing through ltx-core's own (non-reentrant) switch."""

from __future__ import annotations

import torch


def apply_activation_checkpointing(model: torch.nn.Module) -> None:
    # LTXModel checkpoints each transformer block in training mode when this flag is set; using its
    # switch keeps block inputs (dataclasses of tensors) handled the way ltx-core expects.
    model.set_gradient_checkpointing(True)
