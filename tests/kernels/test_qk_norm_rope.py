"""Fused RMSNorm (over all heads) + split RoPE vs float64 references, including ltx-core's own ops.

Legend: B batch, T tokens, H heads, D head dim, C = H * D, d = D / 2.
"""

from __future__ import annotations

import pytest
import torch
from kernel_test_utils import DEVICE, max_rel_err, requires_cuda, seeded
from ltx_core.model.transformer.rope import LTXRopeType, apply_rotary_emb, precompute_freqs_cis

from ltxdist._ltx_core import LTXModel  # noqa: F401  (ltx-core import order; see ltxdist._ltx_core)
from ltxdist_kernels.qk_norm_rope import qk_norm_rope
from ltxdist_kernels.reference import qk_norm_rope_reference

FP32_TOL = 2e-6
EPS = 1e-6


def _rope_tables(gen: torch.Generator, B: int, T: int, H: int, D: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ltx-core SPLIT tables for random video positions (B, 3, T, 2); float64, (B, H, T, D/2)."""
    positions = (
        torch.rand(B, 3, T, 2, generator=gen, dtype=torch.float64)
        * torch.tensor([20.0, 64, 64])[None, :, None, None]
    )
    return precompute_freqs_cis(
        positions, dim=H * D, out_dtype=torch.float64, max_pos=[20, 2048, 2048],
        use_middle_indices_grid=True, num_attention_heads=H, rope_type=LTXRopeType.SPLIT,
    )  # fmt: skip


def _grads(fn, x, w, dy, dtype, cos=None, sin=None):
    x_ = x.to(DEVICE, dtype).requires_grad_()
    w_ = w.to(DEVICE, dtype).requires_grad_()
    tables = [None if t is None else t.to(DEVICE, dtype) for t in (cos, sin)]
    out = fn(x_, w_, EPS, *tables)
    return (out, *torch.autograd.grad(out, (x_, w_), dy.to(DEVICE, dtype)))


# (4, 16): C = 64, the 3-axis frequency band (30) is padded by 2; (7, 8): C = 56 (not a power of two),
# padded by 1. The padding entries (cos 1, sin 0) sit at the start of head 0's band.
@pytest.mark.parametrize(("heads", "dim_head", "pad"), [(4, 16, 2), (7, 8, 1)])
def test_matches_ltx_core_rmsnorm_and_split_rope(heads: int, dim_head: int, pad: int) -> None:
    gen = seeded("qk", heads, dim_head)
    B, T, C = 2, 5, heads * dim_head
    cos, sin = _rope_tables(gen, B, T, heads, dim_head)
    assert torch.all(cos[:, 0, :, :pad] == 1) and torch.all(sin[:, 0, :, :pad] == 0)
    assert not torch.all(sin[:, 0, :, pad] == 0)
    x = torch.randn(B, T, C, generator=gen, dtype=torch.float64) * 3
    w = 1 + 0.3 * torch.randn(C, generator=gen, dtype=torch.float64)
    dy = torch.randn(B, T, C, generator=gen, dtype=torch.float64)

    # ltx-core's own path in float64: torch.nn.RMSNorm then apply_rotary_emb(SPLIT).
    norm = torch.nn.RMSNorm(C, eps=EPS, dtype=torch.float64)
    with torch.no_grad():
        norm.weight.copy_(w)
    x_ltx = x.clone().requires_grad_()
    out_ltx = apply_rotary_emb(norm(x_ltx), (cos, sin), LTXRopeType.SPLIT)
    dx_ltx, dw_ltx = torch.autograd.grad(out_ltx, (x_ltx, norm.weight), dy)

    out_ref, dx_ref, dw_ref = _grads(qk_norm_rope_reference, x, w, dy, torch.float64, cos, sin)
    assert max_rel_err(out_ref, out_ltx) < 1e-12  # the independent reference agrees with ltx-core
    out, dx, dw = _grads(qk_norm_rope, x, w, dy, torch.float32, cos, sin)
    assert out.dtype == torch.float32 and out.shape == (B, T, C)
    assert max_rel_err(out, out_ltx) < FP32_TOL
    assert max_rel_err(dx, dx_ltx) < FP32_TOL
    assert max_rel_err(dw, dw_ltx) < FP32_TOL
    assert max_rel_err(dx_ref, dx_ltx) < 1e-12 and max_rel_err(dw_ref, dw_ltx) < 1e-12


def test_norm_only_without_rope_and_frozen_weight() -> None:
    gen = seeded("qk-norm-only")
    B, T, C = 3, 4, 40
    x = torch.randn(B, T, C, generator=gen, dtype=torch.float64)
    w = 1 + 0.3 * torch.randn(C, generator=gen, dtype=torch.float64)
    dy = torch.randn(B, T, C, generator=gen, dtype=torch.float64)
    out_ref, dx_ref, dw_ref = _grads(qk_norm_rope_reference, x, w, dy, torch.float64)
    out, dx, dw = _grads(qk_norm_rope, x, w, dy, torch.float32)
    assert max_rel_err(out, out_ref) < FP32_TOL
    assert max_rel_err(dx, dx_ref) < FP32_TOL
    assert max_rel_err(dw, dw_ref) < FP32_TOL
    # Frozen gain (the LoRA setting): only dx is produced, and it is unchanged.
    x_ = x.to(DEVICE, torch.float32).requires_grad_()
    out = qk_norm_rope(x_, w.to(DEVICE, torch.float32), EPS)
    (dx_frozen,) = torch.autograd.grad(out, (x_,), dy.to(DEVICE, torch.float32))
    assert max_rel_err(dx_frozen, dx_ref) < FP32_TOL


def test_batch_one_tables_broadcast_over_batch() -> None:
    gen = seeded("qk-broadcast")
    B, T, H, D = 3, 4, 2, 16
    cos, sin = _rope_tables(gen, 1, T, H, D)
    x = torch.randn(B, T, H * D, generator=gen, dtype=torch.float64)
    w = torch.ones(H * D, dtype=torch.float64)
    want = qk_norm_rope_reference(x, w, EPS, cos.expand(B, -1, -1, -1), sin.expand(B, -1, -1, -1))
    got = qk_norm_rope(x.to(DEVICE, torch.float32), w.to(DEVICE, torch.float32), EPS,
                       cos.to(DEVICE, torch.float32), sin.to(DEVICE, torch.float32))  # fmt: skip
    assert max_rel_err(got, want) < FP32_TOL


def _swapped_halves_reference(x, w, eps, cos, sin):
    """Deliberately wrong: rotates with the halves' roles exchanged (x2 first)."""
    B, T, C = x.shape
    H, d = cos.shape[1], cos.shape[-1]
    xn = qk_norm_rope_reference(x, w, eps).reshape(B, T, H, 2, d)
    x1, x2 = xn[..., 1, :], xn[..., 0, :]
    c, s = cos.transpose(1, 2), sin.transpose(1, 2)
    return torch.stack((x1 * c - x2 * s, x2 * c + x1 * s), dim=3).reshape(B, T, C)


def test_wrong_half_order_is_detected() -> None:
    gen = seeded("qk-negative")
    B, T, H, D = 2, 3, 2, 16
    cos, sin = _rope_tables(gen, B, T, H, D)
    x = torch.randn(B, T, H * D, generator=gen, dtype=torch.float64)
    w = torch.ones(H * D, dtype=torch.float64)
    got = qk_norm_rope(x.to(DEVICE, torch.float32), w.to(DEVICE, torch.float32), EPS,
                       cos.to(DEVICE, torch.float32), sin.to(DEVICE, torch.float32))  # fmt: skip
    assert max_rel_err(got, qk_norm_rope_reference(x, w, EPS, cos, sin)) < FP32_TOL
    assert max_rel_err(got, _swapped_halves_reference(x, w, EPS, cos, sin)) > 1e-2


def test_rejects_tables_that_do_not_fit() -> None:
    x = torch.zeros(1, 3, 32, device=DEVICE)
    cos = torch.zeros(1, 2, 4, 8, device=DEVICE)  # T = 4 != 3
    with pytest.raises(ValueError, match="do not fit"):
        qk_norm_rope(x, torch.ones(32, device=DEVICE), EPS, cos, cos)


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize(("heads", "dim_head"), [(32, 128), (32, 64)])
def test_bf16_within_ltx_core_bf16_error(heads: int, dim_head: int) -> None:
    gen = seeded("qk-bf16", heads, dim_head)
    B, T, C = 2, 67, heads * dim_head
    cos, sin = _rope_tables(gen, B, T, heads, dim_head)
    x = torch.randn(B, T, C, generator=gen, dtype=torch.float64)
    w = 1 + 0.3 * torch.randn(C, generator=gen, dtype=torch.float64)
    dy = torch.randn(B, T, C, generator=gen, dtype=torch.float64)
    ref = _grads(qk_norm_rope_reference, x, w, dy, torch.float64, cos, sin)

    def ltx_core(x_, w_, eps, c, s):
        return apply_rotary_emb(torch.nn.functional.rms_norm(x_, (C,), w_, eps), (c, s), LTXRopeType.SPLIT)

    eager = _grads(ltx_core, x, w, dy, torch.bfloat16, cos, sin)
    fused = _grads(qk_norm_rope, x, w, dy, torch.bfloat16, cos, sin)
    for got, base, want in zip(fused, eager, ref, strict=True):
        assert max_rel_err(got, want) <= 2 * max_rel_err(base, want) + 2e-3
