"""The quantized base in the training module: one call between LoRA injection and materialising."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ltxdist.quant.checkpoint import BaseWeightCodec, plan_layer_formats
from ltxdist.quant.modules import LayerFormat, quantize_meta_linears


def prepare_quantized_base(
    model: torch.nn.Module,
    checkpoint: Path,
    *,
    precision: str,
    fp8_scale: str = "row",
    fp8_matmul: bool = False,
) -> dict[str, LayerFormat]:
    """Give the meta-device `model` (LoRA already injected, base frozen) 8-bit storage for the layers
    `precision` quantizes on this checkpoint; `materialize_transformer` then fills them while reading
    the file. Returns the layer formats (empty for bf16)."""
    from ltxdist.models.loader import BaseWeightReader  # here: the loader imports ltxdist.quant

    if precision == "bf16":
        return {}
    formats = plan_layer_formats(
        model, BaseWeightCodec(BaseWeightReader(checkpoint)), precision, fp8_scale=fp8_scale
    )
    quantize_meta_linears(model, formats, fp8_matmul=fp8_matmul)
    return formats


def check_fp8_matmul_device(device: torch.device) -> None:
    """model.fp8_matmul runs `_scaled_mm` with row-wise scales, which torch implements for Hopper (compute
    capability 9.0) and later; the CPU runs the same math (slowly), which the tests use."""
    if device.type != "cuda":
        return
    major, minor = torch.cuda.get_device_capability(device)
    if major < 9:
        raise RuntimeError(
            f"model.fp8_matmul=true needs a Hopper-class GPU (compute capability >= 9.0), this one is "
            f"{major}.{minor}: set model.fp8_matmul=false (the fp8 base is then up-cast per layer)"
        )


def base_precision_metadata(model_cfg: Any) -> dict[str, str]:
    """What the exported LoRA records about the base it was trained against (the adapters themselves are
    bf16 and load on any base precision): `base_precision`, whether fp8 matmuls ran, and the base file."""
    return {
        "base_precision": str(model_cfg.base_precision),
        "base_fp8_matmul": str(bool(model_cfg.fp8_matmul)).lower(),
        "base_checkpoint": Path(str(model_cfg.checkpoint)).name,
    }
