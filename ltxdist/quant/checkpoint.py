"""Base checkpoints with 8-bit weights: reading the official FP8 layout, quantizing a bf16 file tensor by
tensor while loading, and writing the FP8 layout.

The official `ltx-2.3-22b-*-fp8.safetensors` stores, for every Linear of the quantized blocks (all but
0 and 43-47, the per-head gates included), `.weight` as float8_e4m3fn (out, in) with two float32
scalars beside it: `.weight_scale` (weight = data * scale) and `.input_scale` (a calibrated activation
scale for ltx-core's static fp8 matmul). Biases and every other tensor are bf16. ltx-core finds the
quantized layers from the `.weight_scale` siblings; so does ltxdist.

- `model.base_precision=fp8` on such a file keeps its fp8 bytes and scales as they are (layers the file
  keeps in bf16 stay bf16); `.input_scale` is not used (activations are scaled per row on the fly).
- `bf16` on such a file dequantizes each weight as it is read; `int8` dequantizes, then re-quantizes.
- On a bf16 file, `fp8` / `int8` quantize each weight as it is read, on the target device: the bf16 model
  never exists anywhere, the loader holds one tensor at a time.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch
from safetensors import safe_open

from ltxdist.io import save_safetensors_atomic
from ltxdist.quant.formats import (
    FP8_DTYPE,
    dequantize,
    is_quantized_dtype,
    quantize_like,
    quantize_weight,
)
from ltxdist.quant.modules import BLOCK_PREFIX, LayerFormat, default_quantized_layers

WEIGHT_SCALE = ".weight_scale"
INPUT_SCALE = ".input_scale"
SIBLING_SUFFIXES = (WEIGHT_SCALE, INPUT_SCALE)
# Blocks the official FP8 files keep in bf16 (the first and the last five, for the 48-block model).
OFFICIAL_BF16_BLOCKS = (0, 43, 44, 45, 46, 47)


class WeightReader(Protocol):
    def names(self) -> set[str]: ...

    def read(self, name: str, part: object | None = None) -> torch.Tensor: ...


def is_quantization_sibling(name: str) -> bool:
    """A scale stored beside a quantized weight (not a parameter of ltx-core's model)."""
    return name.endswith(SIBLING_SUFFIXES)


def has_weight_scales(path: str | Path) -> bool:
    """Does the checkpoint hold pre-quantized weights (`.weight_scale` siblings)? Reads the header only."""
    with safe_open(str(path), framework="pt") as f:
        return any(k.endswith(WEIGHT_SCALE) for k in f.keys())  # noqa: SIM118 (safe_open is not iterable)


def _scale_owner(scale_name: str) -> str:
    return scale_name[: -len(WEIGHT_SCALE)] + ".weight"


class BaseWeightCodec:
    """Copies base tensors from a checkpoint (bf16 or pre-quantized) into targets of any storage."""

    def __init__(self, reader: WeightReader):
        self.reader = reader
        names = reader.names()
        # name of the weight -> its scale; scales are scalars (or one per row): small enough to keep.
        self.file_scales = {_scale_owner(n): reader.read(n) for n in names if n.endswith(WEIGHT_SCALE)}
        orphans = [w for w in self.file_scales if w not in names]
        if orphans:
            raise ValueError(f"scales without a weight in the checkpoint: {sorted(orphans)[:5]}")
        self.weight_names = {n for n in names if not is_quantization_sibling(n)}

    @property
    def prequantized(self) -> bool:
        return bool(self.file_scales)

    def file_layer_formats(self) -> dict[str, LayerFormat]:
        """The file's own quantized layers (module name -> format), from its `.weight_scale` siblings."""
        return {
            weight[: -len(".weight")]: LayerFormat("fp8", per_row=scale.numel() > 1)
            for weight, scale in self.file_scales.items()
        }

    @torch.no_grad()
    def copy_into(
        self,
        name: str,
        target: torch.Tensor,
        *,
        part: object | None = None,
        scale_target: torch.Tensor | None = None,
        via_dtype: torch.dtype | None = None,
        work_device: torch.device | None = None,
        on_read: Callable[[torch.Tensor], None] | None = None,
    ) -> None:
        """Read `name` (this rank's `part` of it) into `target`; a quantized target also fills its
        `scale_target`. A full-precision target receives the value rounded to `via_dtype` first."""
        tensor = self.reader.read(name, part)
        if on_read is not None:
            on_read(tensor)
        file_scale = self.file_scales.get(name)
        if is_quantized_dtype(target.dtype):
            if scale_target is None:
                raise ValueError(f"{name}: a quantized target needs its weight_scale buffer")
            self._store_quantized(tensor, file_scale, target, scale_target, work_device or target.device)
            return
        if file_scale is not None:
            if file_scale.numel() != 1 and part is not None:
                raise NotImplementedError(f"{name}: per-row file scales cannot be read in row slices")
            tensor = dequantize(tensor, file_scale, via_dtype or target.dtype)
        target.copy_(tensor.to(device=target.device, dtype=via_dtype or target.dtype))

    def _store_quantized(
        self,
        tensor: torch.Tensor,
        file_scale: torch.Tensor | None,
        target: torch.Tensor,
        scale_target: torch.Tensor,
        work_device: torch.device,
    ) -> None:
        if (
            file_scale is not None
            and tensor.dtype == target.dtype
            and file_scale.numel() == scale_target.numel()
        ):
            # Already in this format: keep the file's bytes and scale exactly.
            target.copy_(tensor.to(target.device))
            scale_target.copy_(file_scale.reshape(scale_target.shape).to(scale_target.device))
            return
        full = tensor.to(work_device)
        if file_scale is not None:
            full = dequantize(full, file_scale.to(work_device), torch.float32)
        qdata, scale = quantize_like(full, target.dtype, scale_target)
        target.copy_(qdata)
        scale_target.copy_(scale)


def plan_layer_formats(
    model: torch.nn.Module, codec: BaseWeightCodec, precision: str, *, fp8_scale: str
) -> dict[str, LayerFormat]:
    """Which Linears of `model` get 8-bit storage, and in which format (see the module docstring)."""
    if precision == "bf16":
        return {}
    if precision == "fp8" and codec.prequantized:
        return codec.file_layer_formats()
    per_row = precision == "int8" or fp8_scale == "row"
    return {name: LayerFormat(precision, per_row) for name in default_quantized_layers(model)}


@torch.no_grad()
def write_fp8_checkpoint(
    source: str | Path, out: str | Path, *, bf16_blocks: tuple[int, ...] = OFFICIAL_BF16_BLOCKS
) -> Path:
    """Write `source` (a bf16 LTX checkpoint) in the official FP8 layout (see the module docstring):
    every Linear weight of the blocks not in `bf16_blocks` as float8_e4m3fn with per-tensor
    `.weight_scale` and `.input_scale` (set to 1: ltxdist does not use it). Builds the whole output in
    memory: meant for the tiny checkpoint of the tests, or for trying the FP8 path on a small model."""
    from ltxdist.models.checkpoint_file import TRANSFORMER_PREFIX, read_checkpoint_info
    from ltxdist.models.loader import build_meta_transformer

    info = read_checkpoint_info(source)
    model = build_meta_transformer(info.config)
    linears = {
        TRANSFORMER_PREFIX + name + ".weight"
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and name.startswith(BLOCK_PREFIX)
        and int(name.split(".")[1]) not in bf16_blocks
    }
    tensors: dict[str, torch.Tensor] = {}
    with safe_open(str(info.path), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
            value = f.get_tensor(key)
            if key in linears:
                qdata, scale = quantize_weight(value, "fp8", fp8_scale="tensor")
                assert qdata.dtype == FP8_DTYPE
                stem = key[: -len(".weight")]
                tensors[key] = qdata
                tensors[stem + WEIGHT_SCALE] = scale.reshape(())
                tensors[stem + INPUT_SCALE] = torch.ones((), dtype=torch.float32)
            else:
                tensors[key] = value
    metadata = dict(info.metadata)
    metadata["config"] = json.dumps(info.config)
    save_safetensors_atomic(tensors, Path(out), metadata=metadata)
    return Path(out)
