"""Optional torch.compile of each transformer block."""

from __future__ import annotations

import torch


def apply_compile(model: torch.nn.Module) -> None:
    # Per block, not the whole model: the 48 blocks are identical, so one compiled graph is reused
    # (recompiles only for new shapes), and FSDP2's per-block hooks stay outside the compiled region.
    # `Module.compile` compiles in place, keeping parameter names (no `_orig_mod.` prefix), so
    # checkpoints and the LoRA export see the same keys with and without compile.
    for block in model.transformer_blocks:
        block.compile()
