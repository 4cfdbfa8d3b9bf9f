"""Explicit random initialisation of an LTX transformer.

ltx-core creates parameters with `torch.empty`, so an unloaded model holds whatever bytes the
allocator had. A random-weight model (tiny checkpoints, speed benchmarks) must set every tensor.
"""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def init_transformer_weights(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Initialise every parameter of `model` in place; raises if one is left untouched."""
    touched = set()
    for name, param in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if "scale_shift_table" in leaf:
            # AdaLN tables: same scale as the official init (randn / sqrt(dim)).
            param.copy_(torch.randn(param.shape, generator=generator) / math.sqrt(param.shape[-1]))
        elif leaf == "weight" and param.ndim == 2:
            fan_in = param.shape[1]
            param.copy_(torch.randn(param.shape, generator=generator) / math.sqrt(fan_in))
        elif leaf == "weight" and param.ndim == 1:
            # Norm gains: around one, not exactly one, so a bug that drops them is visible.
            param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=generator))
        elif leaf == "bias":
            param.copy_(0.02 * torch.randn(param.shape, generator=generator))
        else:
            raise ValueError(f"no initialisation rule for parameter {name} with shape {tuple(param.shape)}")
        touched.add(name)
    for name, buf in model.named_buffers():
        if buf.is_floating_point():
            raise ValueError(f"unexpected floating buffer {name}; add an initialisation rule for it")
    missing = {n for n, _ in model.named_parameters()} - touched
    assert not missing, missing
