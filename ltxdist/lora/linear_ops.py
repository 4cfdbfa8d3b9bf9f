"""The LoRA linear as library GEMMs (cuBLAS on GPU): frozen base GEMM with the adapter accumulated in place.

y = x W^T + b + s * (dropout(x) A^T) B^T, with W and b frozen and A, B trainable (fp32 master weights).

Shape legend: M rows (leading dims of x flattened), K in_features, N out_features, R rank.
Tensors: x_MK, W_NK, b_N, A_RK, B_NR, u_MR = dropout(x) A^T, g_MR = dy B, dy_MN.

Why this shape of computation (GPU figures of 2026-12-04, benchmarks/results/kernels_1xh200_*): at
T = 10,752, 4096 -> 4096 the frozen GEMM alone (forward + input gradient) takes 1.01 ms on cuBLAS; eager
LoRA 1.50 ms, of which the adapter's own FLOPs are only 3R/K of the base (2.3% at r32). The rest is extra
passes over (M, N)-sized tensors: `base + lora` reads both and writes a third. Here every (M, N) or (M, K)
result is produced by exactly one pass, and the LoRA product is added by the base GEMM itself:

  forward   u_MR  = dropout(x) A^T                  one skinny GEMM over x (u saved for backward)
            y_MN  = b + s * u B^T                   K = R GEMM writes y once (bias broadcast in)
            y_MN += x W^T                           THE frozen GEMM, beta = 1: reads y in its epilogue
  backward  g_MR  = s * dy B                        skinny GEMM over dy
            dB_NR = s * dy^T u                      from the saved u: no recompute of x A^T
            dA_RK = g^T dropout(x)                  one pass over x
            dx_MK = dropout_mask * (g A) / (1 - p)  K = R GEMM writes dx once
            dx_MK += dy W                           THE frozen GEMM's input gradient, beta = 1

Adapter math runs in x's dtype (bf16 in training) with fp32 accumulation (the GEMM libraries accumulate
in fp32); A and B stay fp32 master weights and their gradients come back in fp32 (on CUDA straight from
the fp32 accumulator, elsewhere from the activation-dtype result).

The two frozen GEMMs go through `frozen_matmul_`, the one place that reads the frozen weight: an 8-bit
base (ltxdist.quant: fp8 / int8 data + `weight_scale`) is up-cast there for this one GEMM and dropped, so
only its 8-bit data is saved for backward. (fp8 scaled-mm, `model.fp8_matmul`, cannot accumulate into an
output and stays on LoRALinear's eager path.)

Dropout (p > 0): the keep-mask is drawn from torch's generator (so `torch.manual_seed` and activation
checkpointing's RNG replay reproduce it) and saved as bool next to x itself, not a dropped copy of x
(to_q / to_k / to_v share one x; eager dropout + linear would save one copy each): dA rebuilds dropout(x)
in backward. Kept elements are scaled by 1 / (1 - p), as `F.dropout`.
"""

from __future__ import annotations

import functools

import torch

from ltxdist.quant.matmul import upcast_weight


def frozen_matmul_(
    out: torch.Tensor,
    a: torch.Tensor,
    weight: torch.Tensor,
    *,
    transposed: bool,
    weight_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """out += a @ weight^T (transposed, the forward) or out += a @ weight (the input gradient), in place.

    The frozen base layer's only GEMMs. In place with beta = 1, so cuBLAS adds `out` in its epilogue
    instead of a separate read-modify-write pass. With `weight_scale`, `weight` is 8-bit data read back
    to out's dtype for this GEMM only (ltxdist.quant.matmul.upcast_weight).
    """
    if weight_scale is not None:
        weight = upcast_weight(weight, weight_scale, out.dtype)
    return out.addmm_(a, weight.t() if transposed else weight)


@functools.cache
def _has_mm_out_dtype() -> bool:
    return hasattr(torch.ops.aten.mm, "dtype")


def _mm_into_dtype(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """a @ b in `dtype` (a master weight's); 16-bit inputs on CUDA give fp32 straight from the accumulator."""
    half = a.dtype in (torch.bfloat16, torch.float16)
    if dtype == torch.float32 and half and a.is_cuda and _has_mm_out_dtype():
        return torch.mm(a, b, out_dtype=torch.float32)
    return torch.mm(a, b).to(dtype)


def draw_keep_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """Bool keep-mask, each element kept with probability 1 - p, from torch's generator."""
    return torch.empty(shape, dtype=torch.bool, device=device).bernoulli_(1.0 - p)


class LoRALinearFunction(torch.autograd.Function):
    """Autograd of the computation in the module docstring; x already 2-D (M, K)."""

    @staticmethod
    def forward(ctx, x_MK, weight_NK, bias_N, lora_A_RK, lora_B_NR, scaling, dropout_p, keep_MK, scale_N1):
        dtype = x_MK.dtype
        A_RK = lora_A_RK.to(dtype)
        B_NR = lora_B_NR.to(dtype)
        u_MR = torch.mm(_dropped(x_MK, keep_MK, dropout_p), A_RK.t())
        if bias_N is None:
            y_MN = torch.mm(u_MR, B_NR.t())
            if scaling != 1.0:
                y_MN.mul_(scaling)
        else:
            y_MN = torch.addmm(bias_N.to(dtype), u_MR, B_NR.t(), alpha=scaling)
        frozen_matmul_(y_MN, x_MK, weight_NK, transposed=True, weight_scale=scale_N1)
        # x and the bool mask, not the dropped copy of x: to_q / to_k / to_v share one x, and each saved
        # dropped copy would be another M x K activation held until backward (rebuilt there for dA).
        ctx.save_for_backward(x_MK, weight_NK, lora_A_RK, lora_B_NR, u_MR, keep_MK, scale_N1)
        ctx.scaling, ctx.dropout_p = float(scaling), float(dropout_p)
        ctx.bias_dtype = None if bias_N is None else bias_N.dtype
        return y_MN

    @staticmethod
    def backward(ctx, dy_MN):
        x_MK, weight_NK, lora_A_RK, lora_B_NR, u_MR, keep_MK, scale_N1 = ctx.saved_tensors
        need_dx, need_W, need_b, need_A, need_B = ctx.needs_input_grad[:5]
        dtype = x_MK.dtype
        s = ctx.scaling
        dy_MN = dy_MN.to(dtype)
        dx = dW = db = dA = dB = None
        if need_dx or need_A:
            g_MR = torch.mm(dy_MN, lora_B_NR.to(dtype))
            if s != 1.0:
                g_MR.mul_(s)
            if need_A:
                dA = _mm_into_dtype(g_MR.t(), _dropped(x_MK, keep_MK, ctx.dropout_p), lora_A_RK.dtype)
            if need_dx:
                if keep_MK is None:
                    dx = torch.mm(g_MR, lora_A_RK.to(dtype))
                else:
                    # 1/(1-p) on the M x R factor, the mask in one pass over dx.
                    dx = torch.mm(g_MR * (1.0 / (1.0 - ctx.dropout_p)), lora_A_RK.to(dtype)).mul_(keep_MK)
                frozen_matmul_(dx, dy_MN, weight_NK, transposed=False, weight_scale=scale_N1)
        if need_B:
            dB = _mm_into_dtype(dy_MN.t(), u_MR, lora_B_NR.dtype)
            if s != 1.0:
                dB.mul_(s)
        # The base is frozen in LoRA training; these plain paths only keep autograd complete.
        if need_W:
            if keep_MK is not None:
                raise RuntimeError("a trainable base weight with LoRA dropout is not supported")
            dW = (dy_MN.t().float() @ x_MK.float()).to(weight_NK.dtype)
        if need_b:
            db = dy_MN.float().sum(dim=0).to(ctx.bias_dtype)
        return dx, dW, db, dA, dB, None, None, None, None


def _dropped(x_MK: torch.Tensor, keep_MK: torch.Tensor | None, dropout_p: float) -> torch.Tensor:
    """The adapter's input: x, or x with the dropped elements zeroed and the kept ones scaled 1/(1-p)."""
    if keep_MK is None:
        return x_MK
    return x_MK * keep_MK * (1.0 / (1.0 - dropout_p))


def check_lora_shapes(
    x: torch.Tensor, weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor
) -> None:
    """x (..., K), W (N, K), A (R, K), B (N, R), or a ValueError naming every shape (both LoRA linears)."""
    K = x.shape[-1]
    N, R = weight.shape[0], lora_A.shape[0]
    if weight.shape[1] != K or lora_A.shape[1] != K or tuple(lora_B.shape) != (N, R):
        shapes = (
            f"x {tuple(x.shape)}, W {tuple(weight.shape)}, A {tuple(lora_A.shape)}, B {tuple(lora_B.shape)}"
        )
        raise ValueError(f"expected x (..., K), W (N, K), A (R, K), B (N, R); got {shapes}")


def lora_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scaling: float,
    dropout_p: float = 0.0,
    keep_mask: torch.Tensor | None = None,
    weight_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = x W^T + b + scaling * (dropout(x) A^T) B^T through library GEMMs (see the module docstring).

    x: (..., K); weight: (N, K); bias: (N,) or None; lora_A: (R, K); lora_B: (N, R). Runs in x's dtype.
    dropout_p > 0 drops elements of the adapter's input only; `keep_mask` (bool, x's shape) fixes the
    mask (tests), otherwise it is drawn from torch's generator. `weight_scale` (an 8-bit base): W is
    8-bit data times that scale (per row (N, 1) or per tensor).
    """
    check_lora_shapes(x, weight, lora_A, lora_B)
    K, N = x.shape[-1], weight.shape[0]
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"lora.dropout must be in [0, 1), got {dropout_p}")
    x_MK = x.reshape(-1, K)
    keep_MK = None
    if dropout_p > 0:
        keep_MK = (
            draw_keep_mask(x_MK.shape, dropout_p, x.device) if keep_mask is None else keep_mask.reshape(-1, K)
        )
    y_MN = LoRALinearFunction.apply(
        x_MK, weight, bias, lora_A, lora_B, float(scaling), float(dropout_p), keep_MK, weight_scale
    )
    return y_MN.reshape(*x.shape[:-1], N)
