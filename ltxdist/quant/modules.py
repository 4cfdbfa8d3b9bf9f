"""Turn Linear layers into quantized-weight layers: on the meta device before loading (the base
transformer), or in place on real weights (the Gemma text encoder).

A quantized layer keeps its names: `weight` (now float8_e4m3fn or int8, frozen) and `bias`, plus a
`weight_scale` buffer, exactly the keys of the official FP8 checkpoint (whose `.input_scale` ltxdist does
not use: activations are quantized per row on the fly). A plain `nn.Linear` becomes a `QuantizedLinear`
(through `__class__`, as ltx-core does for its fp8 layers); a LoRA linear keeps its class and its forward
routes the base part through `frozen_linear` (matmul.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from ltxdist.quant.formats import STORAGE_DTYPES, quantize_weight
from ltxdist.quant.matmul import frozen_linear

# The Linears inside transformer blocks that ltx-core's fp8 cast stores in 8 bits (its
# `_FP8_CAST_LINEAR_SUFFIXES`): attention q/k/v/out and both feed-forward layers, video and audio. The small
# per-head gate projections (`to_gate_logits`) and everything outside the blocks stay in the compute dtype.
BLOCK_PREFIX = "transformer_blocks."
QUANTIZED_LINEAR_SUFFIXES = (".to_q", ".to_k", ".to_v", ".to_out.0", "ff.net.0.proj", "ff.net.2")


class QuantizedLinear(torch.nn.Linear):
    """An `nn.Linear` whose frozen weight is stored in 8 bits with `weight_scale` (see matmul.py)."""

    fp8_matmul: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return frozen_linear(self, x)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, storage={self.weight.dtype}, fp8_matmul={self.fp8_matmul}"


@dataclass(frozen=True)
class LayerFormat:
    """How one Linear's weight is stored: `precision` (fp8 | int8) and its scale's shape."""

    precision: str
    per_row: bool

    def scale_shape(self, out_features: int) -> tuple[int, ...]:
        return (out_features, 1) if self.per_row else ()


def default_quantized_layers(model: torch.nn.Module) -> list[str]:
    """Names of the transformer Linears a bf16 checkpoint is quantized on (see QUANTIZED_LINEAR_SUFFIXES)."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and name.startswith(BLOCK_PREFIX)
        and name.endswith(QUANTIZED_LINEAR_SUFFIXES)
    ]


def _retype(module: torch.nn.Linear, fmt: LayerFormat, fp8_matmul: bool, device: torch.device) -> None:
    weight = module.weight
    module.weight = torch.nn.Parameter(
        torch.empty(weight.shape, dtype=STORAGE_DTYPES[fmt.precision], device=device), requires_grad=False
    )
    module.register_buffer(
        "weight_scale", torch.empty(fmt.scale_shape(weight.shape[0]), dtype=torch.float32, device=device)
    )
    if type(module) is torch.nn.Linear:
        module.__class__ = QuantizedLinear
    # A LoRA linear keeps its class; its forward calls frozen_linear, which reads this flag.
    module.fp8_matmul = fp8_matmul and fmt.precision == "fp8"


def quantize_meta_linears(
    model: torch.nn.Module, formats: dict[str, LayerFormat], *, fp8_matmul: bool = False
) -> None:
    """Give the listed Linears (on the meta device) 8-bit weights and scale buffers, before loading."""
    for name, fmt in formats.items():
        module = model.get_submodule(name)
        if not isinstance(module, torch.nn.Linear):
            raise TypeError(f"{name} is a {type(module).__name__}, not a Linear: it cannot be quantized")
        if module.weight.requires_grad:
            raise ValueError(f"{name}: only frozen base weights are quantized (inject LoRA first)")
        _retype(module, fmt, fp8_matmul, module.weight.device)


@torch.no_grad()
def quantize_linears_in_place(
    model: torch.nn.Module,
    precision: str,
    *,
    device: torch.device,
    select: Callable[[str, torch.nn.Linear], bool] = lambda name, module: True,
) -> int:
    """Quantize real Linear weights one layer at a time on `device` (peak: one layer in full precision
    there), e.g. a text encoder loaded on the CPU for a small GPU. Returns the number of layers."""
    count = 0
    fmt = LayerFormat(precision, per_row=True)
    layers: Iterable[tuple[str, torch.nn.Module]] = list(model.named_modules())
    for name, module in layers:
        if not isinstance(module, torch.nn.Linear) or not select(name, module):
            continue
        full = module.weight.detach().to(device)
        qdata, scale = quantize_weight(full, precision)
        del full
        _retype(module, fmt, fp8_matmul=False, device=device)
        module.weight.copy_(qdata)
        module.weight_scale.copy_(scale)
        if module.bias is not None:
            module.bias = torch.nn.Parameter(module.bias.detach().to(device), requires_grad=False)
        count += 1
    return count
