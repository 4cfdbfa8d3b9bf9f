"""The base matmul of a Linear whose frozen weight is stored quantized (formats.py).

Two ways, both with autograd for the input only (the base is frozen, and its bias too):

- up-cast (any device): the weight is read back to the compute dtype for this one layer, used, and
  dropped. Only the 8-bit data is saved for backward (which up-casts again), never the up-cast copy: a
  run without activation checkpointing would otherwise keep a bf16 copy of every weight until backward.
- fp8 matmul (`model.fp8_matmul`, fp8 storage; Hopper / Ada, and CPU for tests): `torch._scaled_mm` on
  the stored fp8 weight with the activations quantized per row (float8_e4m3fn, scale = row absmax / 448),
  in forward and for the input gradient in backward (the weight's own scales folded into the gradient
  before it is quantized per row). Layers whose dimensions `_scaled_mm` cannot take (not multiples of
  16), and compute dtypes other than bf16, use the up-cast way.

Shape legend: M rows (tokens), K in features, N out features.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ltxdist.quant.formats import FP8_DTYPE, FP8_MAX, is_quantized_dtype

_MIN_AMAX = 1e-12


def upcast_weight(qdata: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """qdata * scale in `dtype`. The in-place multiply computes in float32 (the scale's dtype) and rounds
    once to `dtype`; 8-bit values are exact in bf16, so this is the closest `dtype` weight."""
    weight = qdata.to(dtype)
    # A 0-dim scale takes no part in type promotion: on CUDA it would be rounded to `dtype` first (two
    # roundings). Shape (1,) makes the multiply float32, rounded once into the weight.
    return weight.mul_(scale.reshape(1) if scale.dim() == 0 else scale)


class _UpcastLinear(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, qdata: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
    ):
        ctx.save_for_backward(qdata, scale)
        return F.linear(x, upcast_weight(qdata, scale, x.dtype), None if bias is None else bias.to(x.dtype))

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):  # type: ignore[override]
        qdata, scale = ctx.saved_tensors
        grad_x = grad_out @ upcast_weight(qdata, scale, grad_out.dtype) if ctx.needs_input_grad[0] else None
        return grad_x, None, None, None


def _rowwise_fp8(t_MK: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row float8_e4m3fn quantization: (data (M, K), float32 scale (M, 1))."""
    # The row maxima in the input's own dtype (abs and max are exact), then one float32 copy, scaled and
    # clamped in place: at 10k tokens x 4096 each float32 temporary is 176 MB per layer.
    scale_M1 = (t_MK.abs().amax(dim=1, keepdim=True).float() / FP8_MAX).clamp(min=_MIN_AMAX)
    return t_MK.float().div_(scale_M1).clamp_(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale_M1


def _column_scale(scale: torch.Tensor, n: int) -> torch.Tensor:
    """The weight scale as `_scaled_mm`'s row-wise `scale_b`: float32 (1, N)."""
    return scale.float().reshape(1, -1).expand(1, n).contiguous()


class _Fp8MatmulLinear(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, qdata_NK: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
    ):
        lead, k = x.shape[:-1], x.shape[-1]
        n = qdata_NK.shape[0]
        xq_MK, sx_M1 = _rowwise_fp8(x.reshape(-1, k))
        # qdata_NK.t() is (K, N) column-major: the layout _scaled_mm wants for its second operand.
        y_MN = torch._scaled_mm(
            xq_MK,
            qdata_NK.t(),
            scale_a=sx_M1,
            scale_b=_column_scale(scale, n),
            bias=None,
            out_dtype=x.dtype,
            use_fast_accum=True,
        )
        if bias is not None:
            y_MN = y_MN + bias.to(x.dtype)
        ctx.save_for_backward(qdata_NK, scale)
        ctx.out_dtype = x.dtype
        return y_MN.reshape(*lead, n)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):  # type: ignore[override]
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        qdata_NK, scale = ctx.saved_tensors
        lead, n = grad_out.shape[:-1], grad_out.shape[-1]
        k = qdata_NK.shape[1]
        # grad_x = grad_y @ (diag(scale) qdata): fold the weight scale into grad_y, then quantize its rows.
        g_MN = grad_out.reshape(-1, n).float() * _column_scale(scale, n)
        gq_MN, sg_M1 = _rowwise_fp8(g_MN)
        # Second operand (N, K) in column-major layout: a transposed copy of the fp8 data (1 byte/weight).
        w_NK_colmajor = qdata_NK.t().contiguous().t()
        grad_x = torch._scaled_mm(
            gq_MN,
            w_NK_colmajor,
            scale_a=sg_M1,
            scale_b=torch.ones(1, k, device=grad_out.device, dtype=torch.float32),
            out_dtype=ctx.out_dtype,
            use_fast_accum=False,
        )
        return grad_x.reshape(*lead, k), None, None, None


def fp8_matmul_fits(x: torch.Tensor, qdata: torch.Tensor) -> bool:
    """Row-wise `_scaled_mm` needs fp8 data, both weight dimensions divisible by 16 and a bf16 output."""
    n, k = qdata.shape
    return qdata.dtype == FP8_DTYPE and n % 16 == 0 and k % 16 == 0 and x.dtype == torch.bfloat16


def quantized_linear(
    x: torch.Tensor,
    qdata: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    fp8_matmul: bool = False,
) -> torch.Tensor:
    if bias is not None and bias.requires_grad:
        raise RuntimeError("a quantized base Linear must be frozen (its bias requires grad)")
    if fp8_matmul and fp8_matmul_fits(x, qdata):
        return _Fp8MatmulLinear.apply(x, qdata, scale, bias)
    return _UpcastLinear.apply(x, qdata, scale, bias)


def frozen_linear(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The base part of `module(x)` (a Linear or a LoRA linear), whatever its weight's storage."""
    weight = module.weight
    if not is_quantized_dtype(weight.dtype):
        return F.linear(x, weight, module.bias)
    return quantized_linear(
        x, weight, module.weight_scale, module.bias, fp8_matmul=getattr(module, "fp8_matmul", False)
    )


def dequantized_weight(module: torch.nn.Module, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The module's weight in `dtype` (default: its own dtype, or bf16 for a quantized one)."""
    weight = module.weight
    if not is_quantized_dtype(weight.dtype):
        return weight if dtype is None else weight.to(dtype)
    return upcast_weight(weight, module.weight_scale, dtype or torch.bfloat16)
