"""Fused LoRA linear vs a float64 PyTorch reference: forward, dx, dA, dB (and dW, db when asked).

Shapes are odd on purpose (not multiples of any block size). Legend: M rows, K in, N out, R rank.
"""

from __future__ import annotations

import pytest
import torch
from kernel_test_utils import DEVICE, max_rel_err, requires_cuda, seeded

from ltxdist_kernels.fused_lora_linear import draw_dropout_seed, fused_lora_linear, triton_keep_mask
from ltxdist_kernels.reference import dropout_keep_mask, lora_linear_reference

# fp32 kernels vs float64: a few ulps of fp32 accumulated over K <= 48 terms.
FP32_TOL = 2e-5


def _inputs(gen: torch.Generator, lead: tuple[int, ...], K: int, N: int, R: int, bias: bool = True):
    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    x = randn(*lead, K)
    W_NK = randn(N, K) / K**0.5
    b_N = randn(N) if bias else None
    A_RK = randn(R, K) / K**0.5
    B_NR = randn(N, R)  # non-zero (unlike LoRA init) so every gradient path carries signal
    dy = randn(*lead, N)
    return x, W_NK, b_N, A_RK, B_NR, dy


def _run(fn, x, W_NK, b_N, A_RK, B_NR, dy, dtype, **kw):
    """Output and grads (x, A, B) of fn with leaf copies in `dtype` on DEVICE."""
    leaves = [t.to(DEVICE, dtype).requires_grad_() for t in (x, A_RK, B_NR)]
    x_, A_, B_ = leaves
    W_ = W_NK.to(DEVICE, dtype)
    b_ = None if b_N is None else b_N.to(DEVICE, dtype)
    y = fn(x_, W_, b_, A_, B_, **kw)
    grads = torch.autograd.grad(y, leaves, dy.to(DEVICE, dtype))
    return y, grads


@pytest.mark.parametrize("rank", [1, 5, 128])
@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
def test_forward_and_grads_match_float64_reference(rank: int, dropout_p: float) -> None:
    gen = seeded("lora", rank, dropout_p)
    x, W_NK, b_N, A_RK, B_NR, dy = _inputs(gen, (2, 19), K=45, N=37, R=rank)
    scaling = 16.0 / rank
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    kw = {"scaling": scaling, "dropout_p": dropout_p, "seed": seed}
    y_ref, g_ref = _run(lora_linear_reference, x, W_NK, b_N, A_RK, B_NR, dy, torch.float64, **kw)
    y, g = _run(fused_lora_linear, x, W_NK, b_N, A_RK, B_NR, dy, torch.float32, **kw)
    assert y.shape == y_ref.shape == (2, 19, 37)
    assert max_rel_err(y, y_ref) < FP32_TOL
    for name, got, want in zip(("dx", "dA", "dB"), g, g_ref, strict=True):
        assert got.shape == want.shape, name
        assert max_rel_err(got, want) < FP32_TOL, name


def test_dropout_changes_the_lora_branch_only_as_the_seeded_mask_says() -> None:
    gen = seeded("dropout-effect")
    x, W_NK, b_N, A_RK, B_NR, _ = _inputs(gen, (23,), K=40, N=24, R=4)
    args = [t.to(DEVICE, torch.float32) for t in (x, W_NK, b_N, A_RK, B_NR)]
    y_off = fused_lora_linear(*args, scaling=1.0)
    y_a = fused_lora_linear(*args, scaling=1.0, dropout_p=0.5, seed=11)
    y_a2 = fused_lora_linear(*args, scaling=1.0, dropout_p=0.5, seed=11)
    y_b = fused_lora_linear(*args, scaling=1.0, dropout_p=0.5, seed=12)
    assert torch.equal(y_a, y_a2)  # the seed fully determines the mask
    assert max_rel_err(y_a, y_off) > 1e-2  # dropout is really applied
    assert max_rel_err(y_a, y_b) > 1e-2  # a different seed gives a different mask
    # With B = 0 the LoRA branch vanishes: dropout must not touch the base path.
    args[4] = torch.zeros_like(args[4])
    torch.testing.assert_close(fused_lora_linear(*args, scaling=1.0, dropout_p=0.5, seed=11),
                               fused_lora_linear(*args, scaling=1.0))  # fmt: skip


def test_seed_none_draws_from_torch_generator() -> None:
    gen = seeded("seed-none")
    x, W_NK, b_N, A_RK, B_NR, _ = _inputs(gen, (9,), K=20, N=12, R=3)
    args = [t.to(DEVICE, torch.float32) for t in (x, W_NK, b_N, A_RK, B_NR)]
    torch.manual_seed(5)
    y1 = fused_lora_linear(*args, scaling=1.0, dropout_p=0.4)
    torch.manual_seed(5)
    expected_seed = draw_dropout_seed()
    y_ref = lora_linear_reference(*[a.double() for a in args], scaling=1.0, dropout_p=0.4, seed=expected_seed)
    assert max_rel_err(y1, y_ref) < FP32_TOL


def test_frozen_base_gradients_when_requested_and_no_bias() -> None:
    gen = seeded("base-grads")
    x, W_NK, _, A_RK, B_NR, dy = _inputs(gen, (17,), K=33, N=21, R=6, bias=False)
    b_N = torch.randn(21, generator=gen, dtype=torch.float64)

    def grads(fn, dtype, bias):
        leaves = [t.to(DEVICE, dtype).requires_grad_() for t in (x, W_NK, A_RK, B_NR)]
        b = None if bias is None else bias.to(DEVICE, dtype).requires_grad_()
        y = fn(leaves[0], leaves[1], b, leaves[2], leaves[3], scaling=0.5)
        wanted = leaves if b is None else [*leaves, b]
        return y, torch.autograd.grad(y, wanted, dy.to(DEVICE, dtype))

    for bias in (None, b_N):
        y_ref, g_ref = grads(lora_linear_reference, torch.float64, bias)
        y, g = grads(fused_lora_linear, torch.float32, bias)
        assert max_rel_err(y, y_ref) < FP32_TOL
        for got, want in zip(g, g_ref, strict=True):
            assert max_rel_err(got, want) < FP32_TOL


def test_fp32_adapter_with_lower_precision_activations_returns_grads_in_param_dtype() -> None:
    # LoRASpec keeps A and B in fp32 while activations may be bf16: grads must come back as fp32.
    gen = seeded("param-dtype")
    x, W_NK, b_N, A_RK, B_NR, dy = _inputs(gen, (11,), K=24, N=20, R=2)
    A = A_RK.to(DEVICE, torch.float32).requires_grad_()
    B = B_NR.to(DEVICE, torch.float32).requires_grad_()
    x32 = x.to(DEVICE, torch.float32)
    y = fused_lora_linear(x32, W_NK.to(DEVICE, torch.float32), b_N.to(DEVICE, torch.float32), A, B, 1.0)
    dA, dB = torch.autograd.grad(y, (A, B), dy.to(DEVICE, torch.float32))
    assert dA.dtype == A.dtype and dB.dtype == B.dtype
    assert dA.shape == A.shape and dB.shape == B.shape


def test_wrong_reference_is_detected() -> None:
    """The comparison has teeth: a reference that forgets the LoRA scaling fails it."""
    gen = seeded("negative")
    x, W_NK, b_N, A_RK, B_NR, dy = _inputs(gen, (13,), K=30, N=18, R=4)
    kw = {"dropout_p": 0.0, "seed": 0}
    y, g = _run(fused_lora_linear, x, W_NK, b_N, A_RK, B_NR, dy, torch.float32, scaling=2.0, **kw)
    y_bad, g_bad = _run(lora_linear_reference, x, W_NK, b_N, A_RK, B_NR, dy, torch.float64, scaling=1.0, **kw)
    assert max_rel_err(y, y_bad) > 100 * FP32_TOL
    assert max_rel_err(g[1], g_bad[1]) > 100 * FP32_TOL


def test_kernel_dropout_mask_equals_torch_reimplementation() -> None:
    for seed, p in ((0, 0.5), (2**40 + 12345, 0.1), (987654321, 0.9)):
        got = triton_keep_mask(seed, 21, 44, p, DEVICE).cpu()
        want = dropout_keep_mask(seed, 21, 44, p)
        assert torch.equal(got, want)
    # keep rate ~ 1 - p (a torch-only check on a bigger mask; +-4 sigma)
    keep = dropout_keep_mask(7, 256, 256, 0.3).double().mean().item()
    assert abs(keep - 0.7) < 4 * (0.21 / 256**2) ** 0.5


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("rank", [32, 128])
@pytest.mark.parametrize("dropout_p", [0.0, 0.1])
def test_bf16_within_eager_bf16_error(rank: int, dropout_p: float) -> None:
    gen = seeded("bf16", rank, dropout_p)
    x, W_NK, b_N, A_RK, B_NR, dy = _inputs(gen, (3, 171), K=520, N=392, R=rank)
    kw = {"scaling": 2.0, "dropout_p": dropout_p, "seed": 99}
    y_ref, g_ref = _run(lora_linear_reference, x, W_NK, b_N, A_RK, B_NR, dy, torch.float64, **kw)
    y_eager, g_eager = _run(lora_linear_reference, x, W_NK, b_N, A_RK, B_NR, dy, torch.bfloat16, **kw)
    y, g = _run(fused_lora_linear, x, W_NK, b_N, A_RK, B_NR, dy, torch.bfloat16, **kw)
    for got, eager, want in zip((y, *g), (y_eager, *g_eager), (y_ref, *g_ref), strict=True):
        assert got.dtype == torch.bfloat16
        assert max_rel_err(got, want) <= 2 * max_rel_err(eager, want) + 2e-3


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("path", ["fused", "addmm"])
def test_bf16_activations_with_fp32_adapters_as_training_runs_them(path: str) -> None:
    """Training's setup: bf16 activations and base, fp32 master adapters. Both CUDA paths (the fused
    kernel, and LoRALinear's cuBLAS addmm with its fp32-output adapter GEMM) must give fp32 adapter
    gradients within the error of eager bf16."""
    from ltxdist.lora.linear_ops import lora_linear

    gen = seeded("bf16-fp32-adapters", path)
    x, W_NK, b_N, A_RK, B_NR, dy = _inputs(gen, (3, 171), K=520, N=392, R=32)
    kw = {"scaling": 2.0}
    y_ref, g_ref = _run(lora_linear_reference, x, W_NK, b_N, A_RK, B_NR, dy, torch.float64, **kw)
    y_eager, g_eager = _run(lora_linear_reference, x, W_NK, b_N, A_RK, B_NR, dy, torch.bfloat16, **kw)
    bf16, fp32 = torch.bfloat16, torch.float32
    x_ = x.to(DEVICE, bf16).requires_grad_()
    A_, B_ = (t.to(DEVICE, fp32).requires_grad_() for t in (A_RK, B_NR))
    fn = fused_lora_linear if path == "fused" else lora_linear
    y = fn(x_, W_NK.to(DEVICE, bf16), b_N.to(DEVICE, bf16), A_, B_, **kw)
    grads = torch.autograd.grad(y, (x_, A_, B_), dy.to(DEVICE, bf16))
    assert y.dtype == grads[0].dtype == bf16 and grads[1].dtype == grads[2].dtype == fp32
    for got, eager, want in zip((y, *grads), (y_eager, *g_eager), (y_ref, *g_ref), strict=True):
        assert max_rel_err(got, want) <= 2 * max_rel_err(eager, want) + 2e-3


def test_a_strided_bias_is_read_as_its_values() -> None:
    """The kernel reads the bias at stride 1: a strided view (every other element of a buffer) must give
    what its values give, not the buffer's neighbours."""
    gen = seeded("strided-bias")
    x, W_NK, _, A_RK, B_NR, dy = _inputs(gen, (3,), K=9, N=7, R=2, bias=False)
    buffer = torch.randn(14, generator=gen, dtype=torch.float64)
    strided = buffer[::2]
    kw = {"scaling": 1.0}
    y_ref, _ = _run(lora_linear_reference, x, W_NK, strided.contiguous(), A_RK, B_NR, dy, torch.float64, **kw)

    def with_strided_bias(x_, W_, b_, A_, B_, **kw_):
        return fused_lora_linear(x_, W_, buffer.to(DEVICE, x_.dtype)[::2], A_, B_, **kw_)

    y, _ = _run(with_strided_bias, x, W_NK, None, A_RK, B_NR, dy, torch.float32, **kw)
    assert max_rel_err(y, y_ref) < FP32_TOL
