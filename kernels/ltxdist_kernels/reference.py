"""Plain PyTorch versions of what the Triton kernels compute.

They serve two purposes: the CPU / `torch` backend, and float64 references for the tests. Nothing
here imports Triton, so this module works on any machine.

Shape legend (suffixes on names): M rows (all leading dims of an activation flattened), K in
features, N out features, R LoRA rank, B batch, T tokens, H heads, D head dim, C = H * D channels,
d = D / 2 (one RoPE half).

Dropout mask. The fused kernels draw their LoRA-dropout mask from Triton's Philox-4x32-10 generator
(`tl.randint4x`) keyed by a 64-bit seed, so the backward pass can regenerate it instead of storing it.
`dropout_keep_mask` re-implements that generator bit-exactly in integer torch ops:
element (m, k) of the (M, K) input uses counter word 0 = k // 4, word 1 = m, words 2, 3 = 0, output
lane k % 4, and is kept when the lane's top 24 bits are >= round(p * 2**24). Kept values are scaled
by 1 / (1 - p), as `F.dropout` does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_MASK32 = 0xFFFFFFFF
_PHILOX_ROUND_A = 0xD2511F53
_PHILOX_ROUND_B = 0xCD9E8D57
_PHILOX_KEY_A = 0x9E3779B9
_PHILOX_KEY_B = 0xBB67AE85
_PHILOX_ROUNDS = 10
DROPOUT_THRESHOLD_BITS = 24


def _mul_hi_lo(a: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of a * b for uint32 values held in int64.

    The full product needs 64 unsigned bits and would overflow int64, so b is split in 16-bit halves.
    """
    b_hi, b_lo = b >> 16, b & 0xFFFF
    p_hi = a * b_hi  # < 2**48
    p_lo = a * b_lo  # < 2**48
    hi = (p_hi + (p_lo >> 16)) >> 16
    lo = (((p_hi & 0xFFFF) << 16) + p_lo) & _MASK32
    return hi, lo


def philox4x32(
    c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor, k0: int, k1: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Philox-4x32-10 on int64 tensors holding uint32 values (the generator behind `tl.randint4x`)."""
    c0, c1, c2, c3 = (c.to(torch.int64) & _MASK32 for c in (c0, c1, c2, c3))
    for _ in range(_PHILOX_ROUNDS):
        hi_b, lo_b = _mul_hi_lo(c2, _PHILOX_ROUND_B)
        hi_a, lo_a = _mul_hi_lo(c0, _PHILOX_ROUND_A)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + _PHILOX_KEY_A) & _MASK32
        k1 = (k1 + _PHILOX_KEY_B) & _MASK32
    return c0, c1, c2, c3


def dropout_threshold(p: float) -> int:
    """Integer threshold on the top 24 random bits: drop when below it (probability ~ p)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    return round(p * (1 << DROPOUT_THRESHOLD_BITS))


def dropout_keep_mask(
    seed: int, rows: int, cols: int, p: float, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Boolean (rows, cols) keep-mask identical to the one the fused LoRA kernels generate."""
    if not 0 <= seed < 2**63:
        raise ValueError(f"dropout seed must be in [0, 2**63), got {seed}")
    m_M1 = torch.arange(rows, dtype=torch.int64, device=device)[:, None]
    k_1K = torch.arange(cols, dtype=torch.int64, device=device)[None, :]
    group_MK = (k_1K >> 2).expand(rows, cols)
    zeros_MK = torch.zeros_like(group_MK)
    lanes = philox4x32(group_MK, m_M1.expand(rows, cols), zeros_MK, zeros_MK, seed & _MASK32, seed >> 32)
    lane_MK = (k_1K & 3).expand(rows, cols)
    bits_MK = torch.stack(lanes, dim=-1).gather(-1, lane_MK[..., None])[..., 0]
    return (bits_MK >> (32 - DROPOUT_THRESHOLD_BITS)) >= dropout_threshold(p)


def lora_linear_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scaling: float,
    dropout_p: float = 0.0,
    seed: int | None = None,
    keep_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = x W^T + b + s * (dropout(x) A^T) B^T; dtype of x. The dropout keep-mask is `keep_mask` (bool,
    x's shape) when given, else the fused kernels' seeded mask."""
    dtype = x.dtype
    x_dropped = x
    if dropout_p > 0:
        if keep_mask is None:
            if seed is None:
                raise ValueError("dropout_p > 0 needs the seed the fused kernel used, or the keep_mask")
            keep_mask = dropout_keep_mask(seed, x.numel() // x.shape[-1], x.shape[-1], dropout_p, x.device)
        x_dropped = x * keep_mask.reshape(x.shape).to(dtype) / (1.0 - dropout_p)
    base = F.linear(x, weight.to(dtype), None if bias is None else bias.to(dtype))
    return base + F.linear(F.linear(x_dropped, lora_A.to(dtype)), lora_B.to(dtype)) * scaling


def rms_norm_reference(x_MC: torch.Tensor, weight_C: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim in x's own dtype (pass float64 for a reference)."""
    out = x_MC * torch.rsqrt(x_MC.pow(2).mean(dim=-1, keepdim=True) + eps)
    return out if weight_C is None else out * weight_C.to(x_MC.dtype)


def split_rope_reference(x_BTC: torch.Tensor, cos_BHTd: torch.Tensor, sin_BHTd: torch.Tensor) -> torch.Tensor:
    """Split ("rotate-half within each head") RoPE, written independently of ltx-core.

    Head h owns channels [h*D, (h+1)*D); its first half x1 = channels [0, D/2) and second half x2 pair
    up element-wise: out1 = x1 cos - x2 sin, out2 = x2 cos + x1 sin. cos/sin may have batch size 1.
    """
    B, T, C = x_BTC.shape
    H, d = cos_BHTd.shape[1], cos_BHTd.shape[-1]
    x_BTH2d = x_BTC.reshape(B, T, H, 2, d)
    x1_BTHd, x2_BTHd = x_BTH2d[..., 0, :], x_BTH2d[..., 1, :]
    cos_BTHd = cos_BHTd.transpose(1, 2).to(x_BTC.dtype)
    sin_BTHd = sin_BHTd.transpose(1, 2).to(x_BTC.dtype)
    out1 = x1_BTHd * cos_BTHd - x2_BTHd * sin_BTHd
    out2 = x2_BTHd * cos_BTHd + x1_BTHd * sin_BTHd
    return torch.stack((out1, out2), dim=3).reshape(B, T, C)


def qk_norm_rope_reference(
    x_BTC: torch.Tensor,
    weight_C: torch.Tensor | None,
    eps: float,
    cos_BHTd: torch.Tensor | None = None,
    sin_BHTd: torch.Tensor | None = None,
) -> torch.Tensor:
    """RMSNorm over all heads jointly, then split RoPE (skipped when cos is None)."""
    out = rms_norm_reference(x_BTC, weight_C, eps)
    if cos_BHTd is None:
        return out
    return split_rope_reference(out, cos_BHTd, sin_BHTd)
