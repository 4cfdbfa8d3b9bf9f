"""Fused q/k path of the LTX attention: RMSNorm over all heads jointly, then split RoPE.

Shape legend: B batch, T tokens, M = B * T rows, H heads, D head dim, C = H * D channels, d = D / 2.
Tensors: x_MC (the projected q or k, e.g. the output of a LoRA linear), w_C (RMSNorm gain),
cos_BHTd / sin_BHTd (ltx-core's SPLIT-rope tables, padding included), rstd_M.

Per row (token) m and channel c = h * D + i:
  xn = x * rstd * w,   rstd = 1 / sqrt(mean_c(x^2) + eps)
  j = i mod d;  partner(c) = c + d if i < d else c - d
  out = xn * cos[b, h, t, j] - xn[partner] * sin[b, h, t, j]   (first half of the head)
  out = xn * cos[b, h, t, j] + xn[partner] * sin[b, h, t, j]   (second half)
One program per row for the forward (the row is read once, its partners come from cache). The
backward undoes the rotation, then applies the RMSNorm backward; the weight gradient is summed in
per-program fp32 partials (deterministic). Gradients w.r.t. cos/sin are not produced (fixed tables).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ltxdist_kernels._triton_utils import check_launchable, interpreting, parallel_programs, row_sum
from ltxdist_kernels.reference import qk_norm_rope_reference


@triton.jit
def _rope_partner(channels, HALF: tl.constexpr):
    """Channel offset of the RoPE partner, whether the channel is in its head's first half, and j."""
    i = channels % (2 * HALF)
    first = i < HALF
    partner = tl.where(first, channels + HALF, channels - HALF)
    j = tl.where(first, i, i - HALF)
    return partner, first, j


@triton.jit
def _qk_norm_rope_fwd_kernel(
    x_ptr, w_ptr, cos_ptr, sin_ptr, out_ptr, rstd_ptr,
    T, C, stride_xm, stride_om,
    stride_cb, stride_ch, stride_ct, stride_cd, stride_sb, stride_sh, stride_st, stride_sd,
    eps,
    HAS_ROPE: tl.constexpr, HALF: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    m = tl.program_id(0)
    channels = tl.arange(0, BLOCK_C)
    ok = channels < C
    x_row = x_ptr + m.to(tl.int64) * stride_xm
    x = tl.load(x_row + channels, mask=ok, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(row_sum(x * x) / C + eps)
    w = tl.load(w_ptr + channels, mask=ok, other=0.0).to(tl.float32)
    out = x * rstd * w
    if HAS_ROPE:
        partner, first, j = _rope_partner(channels, HALF)
        x_p = tl.load(x_row + partner, mask=ok, other=0.0).to(tl.float32)
        w_p = tl.load(w_ptr + partner, mask=ok, other=0.0).to(tl.float32)
        b = m // T
        t = m % T
        h = channels // (2 * HALF)
        cs_off = b * stride_cb + h * stride_ch + t * stride_ct + j * stride_cd
        sn_off = b * stride_sb + h * stride_sh + t * stride_st + j * stride_sd
        cos = tl.load(cos_ptr + cs_off, mask=ok, other=0.0)
        sin = tl.load(sin_ptr + sn_off, mask=ok, other=0.0)
        rotated = x_p * rstd * w_p
        out = out * cos.to(tl.float32) + tl.where(first, -rotated, rotated) * sin.to(tl.float32)
    tl.store(out_ptr + m.to(tl.int64) * stride_om + channels, out.to(out_ptr.dtype.element_ty), mask=ok)
    tl.store(rstd_ptr + m, rstd)


@triton.jit
def _qk_norm_rope_bwd_kernel(
    dout_ptr, x_ptr, w_ptr, cos_ptr, sin_ptr, rstd_ptr, dx_ptr, dw_ptr,
    M, T, C, stride_dom, stride_xm, stride_dxm, stride_dws,
    stride_cb, stride_ch, stride_ct, stride_cd, stride_sb, stride_sh, stride_st, stride_sd,
    HAS_ROPE: tl.constexpr, COMPUTE_DW: tl.constexpr, HALF: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    channels = tl.arange(0, BLOCK_C)
    ok = channels < C
    w = tl.load(w_ptr + channels, mask=ok, other=0.0).to(tl.float32)
    if HAS_ROPE:
        partner, first, j = _rope_partner(channels, HALF)
        h = channels // (2 * HALF)
    dw = tl.full((BLOCK_C,), 0.0, tl.float32)
    for m in range(pid, M, tl.num_programs(0)):
        m64 = tl.cast(m, tl.int64)
        dout = tl.load(dout_ptr + m64 * stride_dom + channels, mask=ok, other=0.0).to(tl.float32)
        if HAS_ROPE:
            # Transpose of the rotation: d xn[c] = dout[c] cos + dout[partner] sin * (+1 first, -1 second).
            b = m // T
            t = m % T
            cs_off = b * stride_cb + h * stride_ch + t * stride_ct + j * stride_cd
            sn_off = b * stride_sb + h * stride_sh + t * stride_st + j * stride_sd
            cos = tl.load(cos_ptr + cs_off, mask=ok, other=0.0).to(tl.float32)
            sin = tl.load(sin_ptr + sn_off, mask=ok, other=0.0).to(tl.float32)
            dout_p = tl.load(dout_ptr + m64 * stride_dom + partner, mask=ok, other=0.0).to(tl.float32)
            dxn = dout * cos + tl.where(first, dout_p, -dout_p) * sin
        else:
            dxn = dout
        rstd = tl.load(rstd_ptr + m)
        x_hat = tl.load(x_ptr + m64 * stride_xm + channels, mask=ok, other=0.0).to(tl.float32) * rstd
        if COMPUTE_DW:
            dw += dxn * x_hat
        dx_hat = dxn * w
        dx = rstd * (dx_hat - x_hat * (row_sum(dx_hat * x_hat) / C))
        tl.store(dx_ptr + m64 * stride_dxm + channels, dx.to(dx_ptr.dtype.element_ty), mask=ok)
    if COMPUTE_DW:
        tl.store(dw_ptr + pid * stride_dws + channels, dw, mask=ok)


def _launch_opts(C: int) -> dict:
    if interpreting():
        return {}
    # One row per program; enough warps that each thread holds a handful of the C fp32 values.
    return {"num_warps": 4 if C <= 2048 else 8}


def _rope_tables(cos_BHTd: torch.Tensor | None, sin_BHTd: torch.Tensor | None, x_BTC: torch.Tensor):
    """Validated (cos, sin, strides, half) for the kernels; dummies when there is no RoPE."""
    B, T, C = x_BTC.shape
    if cos_BHTd is None:
        return x_BTC, x_BTC, (0,) * 8, 1
    if sin_BHTd is None or cos_BHTd.shape != sin_BHTd.shape or cos_BHTd.ndim != 4:
        raise ValueError("split RoPE needs cos and sin of the same (B, H, T, D/2) shape")
    Bc, H, Tc, half = cos_BHTd.shape
    if Tc != T or Bc not in (1, B) or 2 * half * H != C:
        raise ValueError(f"RoPE tables {tuple(cos_BHTd.shape)} do not fit x {tuple(x_BTC.shape)}")
    strides = [*cos_BHTd.stride(), *sin_BHTd.stride()]
    if Bc == 1:  # one table for the whole batch
        strides[0] = strides[4] = 0
    return cos_BHTd, sin_BHTd, tuple(strides), half


class QKNormRoPEFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_BTC, weight_C, cos_BHTd, sin_BHTd, eps):
        B, T, C = x_BTC.shape
        x_MC = x_BTC.reshape(B * T, C)
        if x_MC.stride(-1) != 1:
            x_MC = x_MC.contiguous()
        cos, sin, rope_strides, half = _rope_tables(cos_BHTd, sin_BHTd, x_BTC)
        out_MC = torch.empty((B * T, C), device=x_BTC.device, dtype=x_BTC.dtype)
        rstd_M = torch.empty((B * T,), device=x_BTC.device, dtype=torch.float32)
        _qk_norm_rope_fwd_kernel[(B * T,)](
            x_MC, weight_C, cos, sin, out_MC, rstd_M, T, C, x_MC.stride(0), out_MC.stride(0),
            *rope_strides, float(eps),
            HAS_ROPE=cos_BHTd is not None, HALF=half, BLOCK_C=triton.next_power_of_2(C), **_launch_opts(C),
        )  # fmt: skip
        ctx.save_for_backward(x_MC, weight_C, cos, sin, rstd_M)
        ctx.meta = (B, T, C, half, rope_strides, cos_BHTd is not None)
        return out_MC.reshape(B, T, C)

    @staticmethod
    def backward(ctx, dout_BTC):
        x_MC, weight_C, cos, sin, rstd_M = ctx.saved_tensors
        B, T, C, half, rope_strides, has_rope = ctx.meta
        M = B * T
        dout_MC = dout_BTC.reshape(M, C)
        if dout_MC.stride(-1) != 1:
            dout_MC = dout_MC.contiguous()
        need_dx, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        programs = max(1, min(M, parallel_programs(x_MC.device)))
        dx_MC = torch.empty_like(x_MC)
        dw_PC = torch.empty((programs, C) if need_dw else (1, C), device=x_MC.device, dtype=torch.float32)
        _qk_norm_rope_bwd_kernel[(programs,)](
            dout_MC, x_MC, weight_C, cos, sin, rstd_M, dx_MC, dw_PC,
            M, T, C, dout_MC.stride(0), x_MC.stride(0), dx_MC.stride(0), dw_PC.stride(0), *rope_strides,
            HAS_ROPE=has_rope, COMPUTE_DW=need_dw, HALF=half, BLOCK_C=triton.next_power_of_2(C),
            **_launch_opts(C),
        )  # fmt: skip
        dx = dx_MC.reshape(B, T, C) if need_dx else None
        dw = dw_PC.sum(dim=0).to(weight_C.dtype) if need_dw else None
        return dx, dw, None, None, None


def qk_norm_rope(
    x_BTC: torch.Tensor,
    weight_C: torch.Tensor | None,
    eps: float | None,
    cos_BHTd: torch.Tensor | None = None,
    sin_BHTd: torch.Tensor | None = None,
) -> torch.Tensor:
    """RMSNorm(x) over all C = H * D channels with gain `weight_C`, then split RoPE with ltx-core's
    (cos, sin) tables of shape (B or 1, H, T, D/2); no RoPE when cos is None. Output in x's dtype,
    math in fp32. Matches `torch.nn.RMSNorm(C, eps)` followed by ltx-core's `apply_split_rotary_emb`.
    """
    if x_BTC.ndim != 3:
        raise ValueError(f"expected x of shape (B, T, C), got {tuple(x_BTC.shape)}")
    if eps is None:  # torch.nn.RMSNorm's default
        eps = torch.finfo(x_BTC.dtype).eps
    if x_BTC.numel() == 0:
        return qk_norm_rope_reference(x_BTC, weight_C, eps, cos_BHTd, sin_BHTd)
    if weight_C is None:
        weight_C = torch.ones(x_BTC.shape[-1], device=x_BTC.device, dtype=x_BTC.dtype)
    check_launchable(x_BTC, weight_C, cos_BHTd, sin_BHTd)
    # The kernels read the gain at stride 1 (a strided view would be misread).
    return QKNormRoPEFunction.apply(x_BTC, weight_C.contiguous(), cos_BHTd, sin_BHTd, float(eps))
