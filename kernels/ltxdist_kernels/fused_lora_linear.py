"""Fused LoRA linear: y = x W^T + b + s * (dropout(x) A^T) B^T, with W (and b) frozen.

Shape legend: M rows (leading dims of x flattened), K in_features, N out_features, R rank.
Tensors: x_MK, W_NK, b_N, A_RK, B_NR, u_MR = s * dropout(x) A^T, g_MR = s * dy B, dy_MN.

Forward, two launches:
  1. `_lora_down_kernel`   u_MR = s * dropout(x_MK) A^T         (streams x once; u is tiny)
  2. `_gemm_lora_kernel`   y_MN = x W^T + b + u B^T             (the LoRA term is a second, short
                                                                 reduction into the same accumulator)
  Neither dropout(x) nor the (M, N) LoRA product is materialised; the mask is regenerated from the seed.
Backward, four launches (each skipped when its gradient is not needed):
  1. `_lora_down_kernel`   g_MR = s * dy B
  2. `_gemm_lora_kernel`   dx_MK = dy W + mask * (g A) / (1 - p)
  3. `_lora_wgrad_kernel`  dA_RK = g^T dropout(x)                (split over M, fp32 partials summed)
  4. `_lora_wgrad_kernel`  dB_NR = (u^T dy)^T
Saved for backward: x, u_MR (and the seed); no full-size extra activation.
All matmuls accumulate in fp32; u and g are stored in x's dtype (as eager LoRA does), dA and dB are
returned in the dtype of A and B from fp32 sums.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ltxdist.lora.linear_ops import check_lora_shapes
from ltxdist_kernels._triton_utils import (
    cdiv,
    check_launchable,
    dot_precision,
    dropout_keep_tile,
    interpreting,
    next_pow2,
    parallel_programs,
)
from ltxdist_kernels.reference import dropout_threshold, lora_linear_reference

# ---------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["seed", "keep_threshold"])
def _lora_down_kernel(
    a_ptr, b_ptr, out_ptr,
    M, K, R,
    stride_am, stride_ak, stride_br, stride_bk, stride_om, stride_or,
    scale, seed, keep_threshold,
    HAS_DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """out[m, r] = scale * sum_k dropout(a)[m, k] * b[r, k]  (a skinny GEMM; one program per row block)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    ranks = tl.arange(0, BLOCK_R)
    row_ok = rows < M
    rank_ok = ranks < R
    a_rows = a_ptr + rows.to(tl.int64)[:, None] * stride_am
    acc = tl.full((BLOCK_M, BLOCK_R), 0.0, tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        col_ok = cols < K
        a = tl.load(a_rows + cols[None, :] * stride_ak, mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        if HAS_DROPOUT:
            keep = dropout_keep_tile(seed, rows, k0, keep_threshold, BLOCK_M, BLOCK_K)
            a = a * keep.to(a.dtype)  # exact: multiply by 0 or 1
        b_t = tl.load(
            b_ptr + cols[:, None] * stride_bk + ranks[None, :] * stride_br,
            mask=col_ok[:, None] & rank_ok[None, :],
            other=0.0,
        )
        acc = tl.dot(a, b_t, acc, input_precision=DOT_PRECISION)
    acc = acc * scale
    out_ptrs = out_ptr + rows.to(tl.int64)[:, None] * stride_om + ranks[None, :] * stride_or
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & rank_ok[None, :])


@triton.jit(do_not_specialize=["seed", "keep_threshold"])
def _gemm_lora_kernel(
    a_ptr, b_ptr, bias_ptr, c_ptr, d_ptr, out_ptr,
    M, N, K, R,
    stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cr, stride_dr, stride_dn,
    stride_om, stride_on,
    keep_scale, seed, keep_threshold,
    HAS_BIAS: tl.constexpr, HAS_DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
    GROUP_M: tl.constexpr,
):  # fmt: skip
    """out[m, n] = sum_k a[m,k] b[k,n] + bias[n] + dropout_mn(sum_r c[m,r] d[r,n]).

    With HAS_DROPOUT the LoRA term is masked by the keep-mask of element (m, n) and scaled by
    keep_scale: that is the dx epilogue, where (m, n) indexes x.
    """
    # Grouped program order: GROUP_M row blocks share each column block while it is hot in L2.
    pid = tl.program_id(0)
    num_pid_m = cdiv(M, BLOCK_M)
    num_pid_n = cdiv(N, BLOCK_N)
    programs_per_group = GROUP_M * num_pid_n
    first_pid_m = (pid // programs_per_group) * GROUP_M
    group_rows = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (pid % programs_per_group) % group_rows
    pid_n = (pid % programs_per_group) // group_rows

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < N
    a_rows = a_ptr + rows.to(tl.int64)[:, None] * stride_am
    c_rows = c_ptr + rows.to(tl.int64)[:, None] * stride_cm

    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        a = tl.load(a_rows + ks[None, :] * stride_ak, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(
            b_ptr + ks[:, None] * stride_bk + cols[None, :] * stride_bn,
            mask=k_ok[:, None] & col_ok[None, :],
            other=0.0,
        )
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)

    # LoRA term: a short extra reduction over R. Without dropout it shares the main accumulator.
    lora = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32) if HAS_DROPOUT else acc
    for r0 in range(0, R, BLOCK_R):
        rs = r0 + tl.arange(0, BLOCK_R)
        r_ok = rs < R
        c = tl.load(c_rows + rs[None, :] * stride_cr, mask=row_ok[:, None] & r_ok[None, :], other=0.0)
        d = tl.load(
            d_ptr + rs[:, None] * stride_dr + cols[None, :] * stride_dn,
            mask=r_ok[:, None] & col_ok[None, :],
            other=0.0,
        )
        lora = tl.dot(c, d, lora, input_precision=DOT_PRECISION)
    if HAS_DROPOUT:
        keep = dropout_keep_tile(seed, rows, pid_n * BLOCK_N, keep_threshold, BLOCK_M, BLOCK_N)
        acc += tl.where(keep, lora * keep_scale, 0.0)
    else:
        acc = lora

    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    out_ptrs = out_ptr + rows.to(tl.int64)[:, None] * stride_om + cols[None, :] * stride_on
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit(do_not_specialize=["seed", "keep_threshold"])
def _lora_wgrad_kernel(
    c_ptr, a_ptr, out_ptr,
    M, K, R, rows_per_split,
    stride_cm, stride_cr, stride_am, stride_ak, stride_os, stride_or, stride_ok,
    scale, seed, keep_threshold,
    HAS_DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """out[s, r, k] = scale * sum over rows m of split s of c[m, r] * dropout(a)[m, k]  (fp32 partials).

    A reduction over M with a tiny (R, K) output: splitting M over program_id(1) keeps enough programs
    busy; the host sums the partials in a fixed order, so the result is deterministic.
    """
    pid_k = tl.program_id(0)
    split = tl.program_id(1)
    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    ranks = tl.arange(0, BLOCK_R)
    col_ok = cols < K
    rank_ok = ranks < R
    m_start = split * rows_per_split
    m_end = tl.minimum(M, m_start + rows_per_split)
    acc = tl.full((BLOCK_R, BLOCK_K), 0.0, tl.float32)
    for m0 in range(m_start, m_end, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        row_ok = rows < m_end
        c_t = tl.load(
            c_ptr + rows.to(tl.int64)[None, :] * stride_cm + ranks[:, None] * stride_cr,
            mask=rank_ok[:, None] & row_ok[None, :],
            other=0.0,
        )
        a = tl.load(
            a_ptr + rows.to(tl.int64)[:, None] * stride_am + cols[None, :] * stride_ak,
            mask=row_ok[:, None] & col_ok[None, :],
            other=0.0,
        )
        if HAS_DROPOUT:
            keep = dropout_keep_tile(seed, rows, pid_k * BLOCK_K, keep_threshold, BLOCK_M, BLOCK_K)
            a = a * keep.to(a.dtype)  # exact: multiply by 0 or 1
        acc = tl.dot(c_t, a, acc, input_precision=DOT_PRECISION)
    out_ptrs = out_ptr + split * stride_os + ranks[:, None] * stride_or + cols[None, :] * stride_ok
    tl.store(out_ptrs, acc * scale, mask=rank_ok[:, None] & col_ok[None, :])


@triton.jit
def _keep_mask_kernel(out_ptr, M, K, seed, keep_threshold, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """Materialise the keep-mask (tests and debugging only; the LoRA kernels never store it)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    keep = dropout_keep_tile(seed, rows, tl.program_id(1) * BLOCK_K, keep_threshold, BLOCK_M, BLOCK_K)
    mask = (rows < M)[:, None] & (cols < K)[None, :]
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * K + cols[None, :], keep.to(tl.int8), mask=mask)


# ---------------------------------------------------------------------------------------------------
# Launch configuration
# ---------------------------------------------------------------------------------------------------

# Tile sizes for H100-class GPUs (bf16). Autotuned once per (M, N, K, R): a new token count re-tunes
# (seconds). All kernels overwrite their outputs, so re-running them while tuning is harmless; configs
# that do not fit in shared memory are skipped by the autotuner.
_GEMM_CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 256, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
    # Small tiles: short inputs (text context) and fp32, where the big tiles exceed shared memory.
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=4, num_stages=3),
]
_DOWN_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_K": bk}, num_warps=w, num_stages=s)
    for bm, bk, w, s in [(32, 128, 4, 4), (64, 64, 4, 4), (64, 128, 4, 3), (128, 64, 8, 3), (32, 64, 4, 2)]
]
_gemm_lora_tuned = triton.autotune(_GEMM_CONFIGS, key=["M", "N", "K", "R"])(_gemm_lora_kernel)
_lora_down_tuned = triton.autotune(_DOWN_CONFIGS, key=["M", "K", "R"])(_lora_down_kernel)


# LTXDIST_TRITON_AUTOTUNE=0: one fixed config per kernel instead of autotuning every new shape. Autotuning
# compiles every config for every constexpr variant (bias, dropout, rank block): what made the bf16 kernel
# tests take minutes on a fresh GPU machine. The tests set it; training keeps autotuning.
def _autotune() -> bool:
    return os.environ.get("LTXDIST_TRITON_AUTOTUNE", "1").strip().lower() not in ("0", "false", "no", "off")


def _fixed_gemm(dtype: torch.dtype) -> dict:
    if dtype == torch.float32:  # fp32 tiles twice the bytes: the small config fits shared memory
        return {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8, "num_warps": 4, "num_stages": 3}
    return {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8, "num_stages": 3}


_FIXED_DOWN = {"BLOCK_M": 64, "BLOCK_K": 64, "num_warps": 4, "num_stages": 3}

# The interpreter runs programs one by one in numpy: small tiles, and sizes chosen so that tests with
# odd shapes cover partial tiles in every dimension.
_INTERP_GEMM = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 16, "GROUP_M": 2}
_INTERP_DOWN = {"BLOCK_M": 16, "BLOCK_K": 32}


def _rank_block(R: int) -> int:
    # Whole rank in one tile up to 64; larger ranks loop (bounded shared memory in the GEMM tail).
    return min(next_pow2(R), 64)


def _lora_down(a_MK: torch.Tensor, b_RK: torch.Tensor, scale: float, seed: int, keep_threshold: int,
               has_dropout: bool) -> torch.Tensor:  # fmt: skip
    """out_MR = scale * dropout(a_MK) @ b_RK^T in a's dtype (b_RK may be a transposed view)."""
    M, K = a_MK.shape
    R = b_RK.shape[0]
    out_MR = torch.empty((M, R), device=a_MK.device, dtype=a_MK.dtype)
    args = (a_MK, b_RK, out_MR, M, K, R, *a_MK.stride(), *b_RK.stride(), *out_MR.stride(),
            float(scale), seed, keep_threshold)  # fmt: skip
    flags = {"HAS_DROPOUT": has_dropout, "DOT_PRECISION": dot_precision(a_MK.dtype), "BLOCK_R": next_pow2(R)}
    if interpreting():
        _lora_down_kernel[(triton.cdiv(M, _INTERP_DOWN["BLOCK_M"]),)](*args, **flags, **_INTERP_DOWN)
    elif not _autotune():
        _lora_down_kernel[(triton.cdiv(M, _FIXED_DOWN["BLOCK_M"]),)](*args, **flags, **_FIXED_DOWN)
    else:
        _lora_down_tuned[lambda meta: (triton.cdiv(M, meta["BLOCK_M"]),)](*args, **flags)
    return out_MR


def _gemm_lora(a_MK: torch.Tensor, b_KN: torch.Tensor, bias_N: torch.Tensor | None, c_MR: torch.Tensor,
               d_RN: torch.Tensor, keep_scale: float, seed: int, keep_threshold: int,
               has_dropout: bool) -> torch.Tensor:  # fmt: skip
    """out_MN = a @ b + bias + dropout(c @ d) in a's dtype (b and d may be transposed views)."""
    M, K = a_MK.shape
    N = b_KN.shape[1]
    R = c_MR.shape[1]
    out_MN = torch.empty((M, N), device=a_MK.device, dtype=a_MK.dtype)
    args = (a_MK, b_KN, bias_N if bias_N is not None else out_MN, c_MR, d_RN, out_MN, M, N, K, R,
            *a_MK.stride(), *b_KN.stride(), *c_MR.stride(), *d_RN.stride(), *out_MN.stride(),
            float(keep_scale), seed, keep_threshold)  # fmt: skip
    flags = {
        "HAS_BIAS": bias_N is not None,
        "HAS_DROPOUT": has_dropout,
        "DOT_PRECISION": dot_precision(a_MK.dtype),
        "BLOCK_R": _rank_block(R),
    }

    def grid(meta: dict) -> tuple[int]:
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)

    if interpreting():
        _gemm_lora_kernel[grid(_INTERP_GEMM)](*args, **flags, **_INTERP_GEMM)
    elif not _autotune():
        fixed = _fixed_gemm(a_MK.dtype)
        _gemm_lora_kernel[grid(fixed)](*args, **flags, **fixed)
    else:
        _gemm_lora_tuned[grid](*args, **flags)
    return out_MN


def _lora_wgrad(c_MR: torch.Tensor, a_MK: torch.Tensor, scale: float, seed: int, keep_threshold: int,
                has_dropout: bool) -> torch.Tensor:  # fmt: skip
    """out_RK = scale * c^T @ dropout(a) as fp32."""
    M, K = a_MK.shape
    R = c_MR.shape[1]
    block_r = next_pow2(R)
    if interpreting():
        block_m, block_k, warps = 16, 32, 1
    else:
        # Memory-bound: a wide K tile when the (R, BLOCK_K) fp32 accumulator stays small.
        block_m, block_k, warps = 64, (128 if block_r <= 32 else 64 if block_r <= 128 else 32), 4
    k_programs = triton.cdiv(K, block_k)
    m_blocks = triton.cdiv(M, block_m)
    splits = max(1, min(m_blocks, triton.cdiv(parallel_programs(a_MK.device), k_programs)))
    rows_per_split = triton.cdiv(m_blocks, splits) * block_m
    splits = triton.cdiv(M, rows_per_split)
    partial_SRK = torch.empty((splits, R, K), device=a_MK.device, dtype=torch.float32)
    launch = {} if interpreting() else {"num_warps": warps}
    _lora_wgrad_kernel[(k_programs, splits)](
        c_MR, a_MK, partial_SRK, M, K, R, rows_per_split,
        *c_MR.stride(), *a_MK.stride(), *partial_SRK.stride(), float(scale), seed, keep_threshold,
        HAS_DROPOUT=has_dropout, DOT_PRECISION=dot_precision(a_MK.dtype),
        BLOCK_M=block_m, BLOCK_K=block_k, BLOCK_R=block_r, **launch,
    )  # fmt: skip
    return partial_SRK.sum(dim=0)


def triton_keep_mask(seed: int, rows: int, cols: int, p: float, device: torch.device | str) -> torch.Tensor:
    """The (rows, cols) boolean keep-mask exactly as the LoRA kernels generate it in-register."""
    out = torch.empty((rows, cols), device=device, dtype=torch.int8)
    check_launchable(out)
    block_m, block_k = 16, 32
    grid = (triton.cdiv(rows, block_m), triton.cdiv(cols, block_k))
    _keep_mask_kernel[grid](out, rows, cols, seed, dropout_threshold(p), BLOCK_M=block_m, BLOCK_K=block_k)
    return out.bool()


# ---------------------------------------------------------------------------------------------------
# Autograd
# ---------------------------------------------------------------------------------------------------


class FusedLoRALinearFunction(torch.autograd.Function):
    """Autograd wrapper; inputs as in `fused_lora_linear`, x already 2-D (M, K)."""

    @staticmethod
    def forward(ctx, x_MK, weight_NK, bias_N, lora_A_RK, lora_B_NR, scaling, dropout_p, seed):
        dtype = x_MK.dtype
        has_dropout = dropout_p > 0.0
        keep_threshold = dropout_threshold(dropout_p)
        keep_scale = 1.0 / (1.0 - dropout_p)
        # Kernels run in x's dtype; A and B may be kept in fp32 by the training code.
        W_NK = weight_NK.to(dtype)
        A_RK = lora_A_RK.to(dtype)
        B_NR = lora_B_NR.to(dtype)
        b_N = None if bias_N is None else bias_N.to(dtype)
        u_MR = _lora_down(x_MK, A_RK, scaling * keep_scale, seed, keep_threshold, has_dropout)
        y_MN = _gemm_lora(x_MK, W_NK.t(), b_N, u_MR, B_NR.t(), 1.0, 0, 0, has_dropout=False)
        ctx.save_for_backward(x_MK, weight_NK, lora_A_RK, lora_B_NR, u_MR)
        ctx.has_bias = bias_N is not None
        ctx.bias_dtype = None if bias_N is None else bias_N.dtype
        ctx.lora_args = (float(scaling), float(dropout_p), int(seed))
        return y_MN

    @staticmethod
    def backward(ctx, dy_MN):
        x_MK, weight_NK, lora_A_RK, lora_B_NR, u_MR = ctx.saved_tensors
        scaling, dropout_p, seed = ctx.lora_args
        need_dx, need_W, need_b, need_A, need_B = ctx.needs_input_grad[:5]
        has_dropout = dropout_p > 0.0
        keep_threshold = dropout_threshold(dropout_p)
        keep_scale = 1.0 / (1.0 - dropout_p)
        dtype = x_MK.dtype
        dy_MN = dy_MN.to(dtype).contiguous()
        A_RK = lora_A_RK.to(dtype)
        dx = dW = db = dA = dB = None
        if need_dx or need_A:
            g_MR = _lora_down(dy_MN, lora_B_NR.to(dtype).t(), scaling, 0, 0, has_dropout=False)
            if need_dx:
                dx = _gemm_lora(dy_MN, weight_NK.to(dtype), None, g_MR, A_RK, keep_scale, seed,
                                keep_threshold, has_dropout)  # fmt: skip
            if need_A:
                dA_RK = _lora_wgrad(g_MR, x_MK, keep_scale, seed, keep_threshold, has_dropout)
                dA = dA_RK.to(lora_A_RK.dtype)
        if need_B:
            dB = _lora_wgrad(u_MR, dy_MN, 1.0, 0, 0, has_dropout=False).t().contiguous().to(lora_B_NR.dtype)
        # The base layer is frozen in LoRA training; these unfused paths only keep autograd complete.
        if need_W:
            dW = (dy_MN.t().float() @ x_MK.float()).to(weight_NK.dtype)
        if need_b:
            db = dy_MN.float().sum(dim=0).to(ctx.bias_dtype)
        return dx, dW, db, dA, dB, None, None, None


def draw_dropout_seed(generator: torch.Generator | None = None) -> int:
    """A fresh dropout seed from torch's CPU generator (so torch.manual_seed and activation
    checkpointing's RNG-state replay reproduce it), without touching the GPU."""
    return int(torch.randint(0, 2**62, (1,), generator=generator).item())


def fused_lora_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scaling: float,
    dropout_p: float = 0.0,
    seed: int | None = None,
) -> torch.Tensor:
    """y = x W^T + b + scaling * (dropout(x) A^T) B^T with Triton kernels (CUDA, or the interpreter).

    x: (..., K); weight: (N, K); bias: (N,) or None; lora_A: (R, K); lora_B: (N, R). Runs in x's dtype
    with fp32 accumulation. dropout_p > 0 drops elements of x on the LoRA branch only, with a mask drawn
    from `seed` (a fresh one from torch's generator when None); `reference.dropout_keep_mask(seed, M, K, p)`
    reproduces it for x flattened to (M, K).
    """
    check_lora_shapes(x, weight, lora_A, lora_B)
    K = x.shape[-1]
    if dropout_p > 0 and seed is None:
        seed = draw_dropout_seed()
    if x.numel() == 0:  # nothing to launch; keeps autograd and shapes consistent
        return lora_linear_reference(x, weight, bias, lora_A, lora_B, scaling, dropout_p, seed)
    check_launchable(x, weight, lora_A, lora_B)
    x_MK = x.reshape(-1, K)
    if x_MK.stride(-1) != 1:
        x_MK = x_MK.contiguous()
    if bias is not None:
        bias = bias.contiguous()  # the kernel reads it at stride 1 (a strided view would be misread)
    y_MN = FusedLoRALinearFunction.apply(
        x_MK, weight, bias, lora_A, lora_B, float(scaling), float(dropout_p), int(seed or 0)
    )
    return y_MN.reshape(*x.shape[:-1], weight.shape[0])
