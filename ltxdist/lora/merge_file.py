"""Folding a LoRA file into base weights: W += strength * B @ A.

Two weight layouts take a delta exactly enough to be worth it:
- full precision (bf16, fp32): the sum in float32, rounded once to the weight's dtype;
- the official FP8 layout (float8 data with a `.weight_scale` sibling): read back as data * scale, the
  delta added in float32, the sum quantized again at the same scale granularity with a new scale (the
  sum's range differs). Its `.input_scale`, a calibration of the activations, is kept. Adding the delta
  to the raw fp8 values instead would lose it: they are ~1/scale times the weight.
Any other 8-bit weight (no scale beside it) is refused.

`merge_lora_into_checkpoint` streams: it reads one tensor of the base at a time and writes the merged
file tensor by tensor through a temporary file, so a 44 GB base merges in the memory of its largest
tensor, and an interrupted merge leaves no partial output.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open

from ltxdist.io import SAFETENSORS_DTYPES, SafetensorsWriter, atomic_file
from ltxdist.lora.comfy_format import A_SUFFIX, B_SUFFIX, LoRAFile, LoRAFileError
from ltxdist.quant.checkpoint import WEIGHT_SCALE
from ltxdist.quant.formats import FP8_DTYPE, dequantize, is_quantized_dtype, quantize_like

WEIGHT = ".weight"


def lora_delta(lora: LoRAFile, name: str) -> torch.Tensor:
    """B @ A of one adapter in float32 (alpha / rank is baked into the file's B)."""
    return lora.tensors[name + B_SUFFIX].float() @ lora.tensors[name + A_SUFFIX].float()


def _check_layout(
    lora: LoRAFile,
    name: str,
    key: str,
    dtype: torch.dtype,
    shape: tuple[int, ...],
    has_scale: bool,
    base: str | Path,
) -> None:
    """Refuse, before anything is written, a weight this merge cannot take the adapter's delta into."""
    a, b = lora.tensors[name + A_SUFFIX], lora.tensors[name + B_SUFFIX]
    if (b.shape[0], a.shape[1]) != tuple(shape):
        raise LoRAFileError(
            f"{lora.path}: {name} delta {(b.shape[0], a.shape[1])} != base {tuple(shape)} in {base}"
        )
    fp8_with_scale = dtype == FP8_DTYPE and has_scale
    if not fp8_with_scale and (is_quantized_dtype(dtype) or not dtype.is_floating_point):
        raise ValueError(
            f"{base}: {key} is stored as {dtype} without a .weight_scale beside it, a layout this merge "
            "cannot add a delta to exactly; merge into the bf16 checkpoint instead"
        )


@torch.no_grad()
def merged_weight(
    weight: torch.Tensor, scale: torch.Tensor | None, delta: torch.Tensor, strength: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, scale) after W += strength * delta, in the weight's own layout (see the module docstring),
    on the weight's device (a LoRA file is read to the CPU; the sampler's base may be on a GPU)."""
    delta = delta.to(weight.device)
    if scale is None:
        return (weight.float() + strength * delta).to(weight.dtype), None
    full = dequantize(weight, scale, torch.float32) + strength * delta
    return quantize_like(full, weight.dtype, scale)


@torch.no_grad()
def merge_lora_into_state_dict(
    state_dict: dict[str, torch.Tensor],
    lora: LoRAFile,
    strength: float = 1.0,
    prefix: str = "",
    *,
    base: str | Path = "the base",
) -> int:
    """W += strength * B @ A for every adapter of `lora`, in place in `state_dict`; returns how many."""
    for name in lora.modules:
        key = f"{prefix}{name}{WEIGHT}"
        if key not in state_dict:
            raise LoRAFileError(f"{lora.path}: {base} has no weight {key!r} for adapter {name!r}")
        scale_key = f"{prefix}{name}{WEIGHT_SCALE}"
        weight = state_dict[key]
        _check_layout(lora, name, key, weight.dtype, tuple(weight.shape), scale_key in state_dict, base)
        delta = lora_delta(lora, name)
        new_weight, new_scale = merged_weight(weight, state_dict.get(scale_key), delta, strength)
        state_dict[key] = new_weight
        if new_scale is not None:
            state_dict[scale_key] = new_scale
    return len(lora.modules)


@torch.no_grad()
def merge_lora_into_checkpoint(
    base: str | Path,
    lora: LoRAFile,
    out: str | Path,
    *,
    strength: float = 1.0,
    prefix: str = "",
    metadata: dict[str, str] | None = None,
    on_tensor: Callable[[int], None] | None = None,
) -> int:
    """Write `base` with `lora` folded in to `out` (atomically, streaming; see the module docstring).
    `on_tensor(nbytes)` is called after each tensor is written (a progress bar). Returns the adapters."""
    with safe_open(os.fspath(base), framework="pt") as f:
        names = list(f.keys())
        layout = {}
        for key in names:
            part = f.get_slice(key)
            layout[key] = (SAFETENSORS_DTYPES[part.get_dtype()], tuple(part.get_shape()))
        adapted: dict[str, str] = {}  # a base key (weight or its scale) -> the adapter that changes it
        for name in lora.modules:
            key, scale_key = f"{prefix}{name}{WEIGHT}", f"{prefix}{name}{WEIGHT_SCALE}"
            if key not in layout:
                raise LoRAFileError(f"{lora.path}: {base} has no weight {key!r} for adapter {name!r}")
            dtype, shape = layout[key]
            _check_layout(lora, name, key, dtype, shape, scale_key in layout, base)
            adapted[key] = name
            if scale_key in layout:
                adapted[scale_key] = name

        def merged(key: str) -> torch.Tensor:
            name = adapted[key]
            scale_key = f"{prefix}{name}{WEIGHT_SCALE}"
            scale = f.get_tensor(scale_key) if scale_key in layout else None
            # Computed for the weight and again for its scale (written first: larger element size), so
            # that nothing waits in memory between the two.
            weight, new_scale = merged_weight(
                f.get_tensor(f"{prefix}{name}{WEIGHT}"), scale, lora_delta(lora, name), strength
            )
            return new_scale if key == scale_key else weight

        with atomic_file(out) as tmp, open(tmp, "wb") as stream:
            writer = SafetensorsWriter(stream, layout, metadata)
            for key in writer.order:
                tensor = merged(key) if key in adapted else f.get_tensor(key)
                writer.write(key, tensor)
                if on_tensor is not None:
                    on_tensor(tensor.numel() * tensor.element_size())
                del tensor
            writer.finish()
    return len(lora.modules)
