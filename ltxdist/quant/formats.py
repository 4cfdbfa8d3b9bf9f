"""Storage formats of a frozen base weight: what `model.base_precision` names and how a weight is
quantized to it and read back.

A quantized weight is two plain tensors: `qdata` (out, in) in the storage dtype and a float32 `scale`,
either per row `(out, 1)` or per tensor `()`, with `weight ~= qdata * scale`. Plain tensors (not a tensor
subclass) so that state dicts, DDP, block offloading and `Tensor.copy_` see ordinary tensors.

- fp8: float8_e4m3fn, scale = absmax / 448 (per row by default, `model.fp8_scale`); torch only.
- int8: symmetric per-row int8 through torchao's affine quantization primitives (`pip install torchao`).
"""

from __future__ import annotations

import torch

BASE_PRECISIONS = ("bf16", "fp8", "int8")
FP8_SCALES = ("row", "tensor")
FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448
STORAGE_DTYPES = {"fp8": FP8_DTYPE, "int8": torch.int8}
QUANTIZED_DTYPES = frozenset(STORAGE_DTYPES.values())
# Smallest scale: an all-zero row would otherwise divide by zero.
_MIN_SCALE = 1e-12


def is_quantized_dtype(dtype: torch.dtype) -> bool:
    return dtype in QUANTIZED_DTYPES


def precision_of_dtype(dtype: torch.dtype) -> str:
    for name, stored in STORAGE_DTYPES.items():
        if stored == dtype:
            return name
    return "bf16"


@torch.no_grad()
def quantize_fp8(weight: torch.Tensor, per_row: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """weight (out, in) -> (float8_e4m3fn data, float32 scale (out, 1) or ())."""
    w = weight.float()
    amax = w.abs().amax(dim=1, keepdim=True) if per_row else w.abs().amax()
    scale = (amax / FP8_MAX).clamp(min=_MIN_SCALE)
    # Clamp before the cast: float8_e4m3fn has no infinity and an out-of-range cast gives NaN.
    qdata = (w / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return qdata, scale


def _torchao_primitives():
    try:
        from torchao.quantization import quant_primitives
    except ImportError as exc:
        raise ImportError(
            "model.base_precision=int8 quantizes through torchao: pip install 'torchao>=0.18,<0.19' "
            "(or `pip install -e .[quant]`)"
        ) from exc
    return quant_primitives


@torch.no_grad()
def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight (out, in) -> (int8 data, float32 scale (out, 1)): symmetric, one scale per output row."""
    qp = _torchao_primitives()
    w = weight.float()
    block = (1, w.shape[1])
    scale, zero_point = qp.choose_qparams_affine(
        w, qp.MappingType.SYMMETRIC, block, torch.int8, eps=_MIN_SCALE, scale_dtype=torch.float32
    )
    qdata = qp.quantize_affine(w, block, scale, zero_point, torch.int8)
    return qdata, scale.reshape(-1, 1).float()


def quantize_weight(
    weight: torch.Tensor, precision: str, *, fp8_scale: str = "row"
) -> tuple[torch.Tensor, torch.Tensor]:
    if precision == "fp8":
        return quantize_fp8(weight, per_row=fp8_scale == "row")
    if precision == "int8":
        return quantize_int8(weight)
    raise ValueError(
        f"model.base_precision: cannot quantize to {precision!r} ({' | '.join(BASE_PRECISIONS)})"
    )


def quantize_like(
    weight: torch.Tensor, storage_dtype: torch.dtype, scale_like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`weight` quantized to `storage_dtype` at the granularity of an existing scale `scale_like` (one
    value: per tensor; else one per row), the new scale in `scale_like`'s shape and dtype: for a weight
    that takes the place of one stored with that scale (a merge writes the sum back beside the file's
    scale; the loader fills the model's scale buffer)."""
    per_row = scale_like.numel() > 1
    qdata, scale = quantize_weight(
        weight, precision_of_dtype(storage_dtype), fp8_scale="row" if per_row else "tensor"
    )
    return qdata, scale.reshape(scale_like.shape).to(scale_like.dtype)


def dequantize(qdata: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The weight in `dtype` (scale applied in float32, one rounding to `dtype`). `scale` as stored: one
    value (any shape) or one per row, `(out,)` or `(out, 1)` (broadcast along the row)."""
    rows = scale.reshape(-1, 1) if scale.numel() > 1 else scale
    return (qdata.float() * rows.float()).to(dtype)


def storage_bytes_per_param(precision: str) -> float:
    """Bytes one frozen base weight element takes (scales are negligible: one float per row)."""
    return 1.0 if precision in STORAGE_DTYPES else 2.0
