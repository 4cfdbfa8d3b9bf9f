"""The library-GEMM LoRA linear (ltxdist/lora/linear_ops.py, LoRALinear's forward) vs a float64 reference.

Forward, dx, dA, dB (and the frozen base's gradients when asked), with and without bias and dropout, on odd
shapes. Legend: M rows, K in, N out, R rank.
"""

from __future__ import annotations

import pytest
import torch
from kernel_test_utils import max_rel_err, seeded

import ltxdist.lora.linear_ops as ops
from ltxdist.lora.layers import LoRALinear
from ltxdist.lora.linear_ops import lora_linear
from ltxdist_kernels.reference import lora_linear_reference

FP32_TOL = 2e-5


def _case(gen: torch.Generator, lead: tuple[int, ...], K: int, N: int, R: int, bias: bool, p: float):
    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    x, dy = randn(*lead, K), randn(*lead, N)
    W_NK, A_RK, B_NR = randn(N, K) / K**0.5, randn(R, K) / K**0.5, randn(N, R)  # B != 0: every path live
    b_N = randn(N) if bias else None
    keep = torch.rand(*lead, K, generator=gen) >= p if p > 0 else None
    return x, W_NK, b_N, A_RK, B_NR, dy, keep


def _run(fn, case, dtype: torch.dtype, adapter_dtype: torch.dtype, scaling: float, p: float, **kw):
    x, W_NK, b_N, A_RK, B_NR, dy, keep = case
    x_ = x.to(dtype).requires_grad_()
    A_, B_ = (t.to(adapter_dtype).requires_grad_() for t in (A_RK, B_NR))
    b_ = None if b_N is None else b_N.to(dtype)
    y = fn(x_, W_NK.to(dtype), b_, A_, B_, scaling, p, keep_mask=keep, **kw)
    return (y, *torch.autograd.grad(y, (x_, A_, B_), dy.to(dtype)))


@pytest.mark.parametrize("rank", [1, 5, 16])
@pytest.mark.parametrize(("bias", "dropout_p"), [(True, 0.0), (False, 0.0), (True, 0.3)])
def test_matches_float64_reference(rank: int, bias: bool, dropout_p: float) -> None:
    case = _case(seeded("addmm", rank, bias, dropout_p), (2, 19), K=45, N=37, R=rank, bias=bias, p=dropout_p)
    scaling = 16.0 / rank
    want = _run(lora_linear_reference, case, torch.float64, torch.float64, scaling, dropout_p)
    exact = _run(lora_linear, case, torch.float64, torch.float64, scaling, dropout_p)
    got = _run(lora_linear, case, torch.float32, torch.float32, scaling, dropout_p)
    for name, e, g, w in zip(("y", "dx", "dA", "dB"), exact, got, want, strict=True):
        assert g.shape == w.shape and g.dtype == torch.float32, name
        assert max_rel_err(e, w) < 1e-12, name  # same math in float64: agreement to rounding
        assert max_rel_err(g, w) < FP32_TOL, name


def test_wrong_reference_fails() -> None:
    """The comparison has teeth: a reference without the scaling, or with another mask, fails it."""
    case = _case(seeded("addmm-negative"), (13,), K=30, N=18, R=4, bias=True, p=0.3)
    got = _run(lora_linear, case, torch.float32, torch.float32, 2.0, 0.3)
    wrong_scale = _run(lora_linear_reference, case, torch.float64, torch.float64, 1.0, 0.3)
    assert max_rel_err(got[0], wrong_scale[0]) > 100 * FP32_TOL
    assert max_rel_err(got[2], wrong_scale[2]) > 100 * FP32_TOL
    x, W, b, A, B, dy, keep = case
    other_mask = (x, W, b, A, B, dy, ~keep)
    wrong_mask = _run(lora_linear_reference, other_mask, torch.float64, torch.float64, 2.0, 0.3)
    assert max_rel_err(got[1], wrong_mask[1]) > 100 * FP32_TOL


def test_bf16_activations_with_fp32_master_adapters() -> None:
    """Training's setting: bf16 x, W; fp32 A, B. Outputs in bf16, adapter grads in fp32, and the error vs
    float64 within twice that of the same arithmetic done eagerly in bf16."""
    case = _case(seeded("addmm-bf16"), (3, 41), K=96, N=80, R=8, bias=True, p=0.0)
    want = _run(lora_linear_reference, case, torch.float64, torch.float64, 2.0, 0.0)
    eager = _run(lora_linear_reference, case, torch.bfloat16, torch.bfloat16, 2.0, 0.0)
    got = _run(lora_linear, case, torch.bfloat16, torch.float32, 2.0, 0.0)
    assert [t.dtype for t in got] == [torch.bfloat16, torch.bfloat16, torch.float32, torch.float32]
    for g, e, w in zip(got, eager, want, strict=True):
        assert max_rel_err(g, w) <= 2 * max_rel_err(e, w) + 1e-3


def test_frozen_base_goes_through_the_single_seam_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forward and input gradient of the frozen base are the two calls of `frozen_matmul_` (the one place
    that reads W, and up-casts an 8-bit one), and nothing else multiplies by W."""
    calls: list[bool] = []
    seam = ops.frozen_matmul_

    def counting(out, a, weight, *, transposed, weight_scale=None):
        calls.append(transposed)
        return seam(out, a, weight, transposed=transposed, weight_scale=weight_scale)

    monkeypatch.setattr(ops, "frozen_matmul_", counting)
    case = _case(seeded("addmm-seam"), (7,), K=12, N=10, R=3, bias=True, p=0.0)
    _run(lora_linear, case, torch.float32, torch.float32, 1.0, 0.0)
    assert calls == [True, False]


def test_trainable_base_and_no_input_grad() -> None:
    gen = seeded("addmm-base-grads")
    x, W_NK, b_N, A_RK, B_NR, dy, _ = _case(gen, (9,), K=11, N=6, R=2, bias=True, p=0.0)

    def grads(fn, dtype):
        W, b, A, B = (t.to(dtype).requires_grad_() for t in (W_NK, b_N, A_RK, B_NR))
        y = fn(x.to(dtype), W, b, A, B, 0.5)  # x without grad: no dx is computed
        return torch.autograd.grad(y, (W, b, A, B), dy.to(dtype))

    for got, want in zip(
        grads(lora_linear, torch.float32), grads(lora_linear_reference, torch.float64), strict=True
    ):
        assert max_rel_err(got, want) < FP32_TOL


def test_lora_linear_module_uses_it_with_torch_rng_dropout() -> None:
    """LoRALinear in training draws its mask from torch's generator (reproducible under manual_seed) and
    matches the reference given that mask; in eval mode there is no dropout."""
    base = torch.nn.Linear(24, 16, dtype=torch.float64)
    layer = LoRALinear(base, rank=4, alpha=8.0, dropout=0.5, dtype=torch.float64)
    with torch.no_grad():
        layer.lora_B.normal_(generator=seeded("module-B"))
    x = torch.randn(5, 24, dtype=torch.float64, generator=seeded("module-x"))
    torch.manual_seed(3)
    y = layer(x)
    torch.manual_seed(3)
    keep = ops.draw_keep_mask(x.shape, 0.5, x.device)
    args = (x, layer.weight, layer.bias, layer.lora_A, layer.lora_B, layer.scaling, 0.5)
    torch.testing.assert_close(y, lora_linear_reference(*args, keep_mask=keep), rtol=1e-12, atol=1e-12)
    layer.eval()
    torch.testing.assert_close(layer(x), lora_linear_reference(*args[:-1], 0.0), rtol=1e-12, atol=1e-12)


def test_with_dropout_backward_holds_x_and_a_bool_mask_not_a_dropped_copy() -> None:
    """to_q, to_k and to_v read one x: each saving its own dropped copy of x held another M x K
    activation until backward. Only x itself (shared) and the 1-byte mask may be saved at M x K."""
    gen = seeded("saved-with-dropout")
    x, W_NK, b_N, A_RK, B_NR, _, keep = _case(gen, (13,), K=10, N=7, R=3, bias=True, p=0.4)
    x = x.float().requires_grad_()
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        lora_linear(x, W_NK.float(), b_N.float(), A_RK.float().requires_grad_(), B_NR.float(), 0.5, 0.4, keep)
    big = [t for t in saved if t.shape == x.shape]
    assert big, "x is saved for dA"
    assert all(t.dtype == torch.bool or t.data_ptr() == x.data_ptr() for t in big), [t.dtype for t in big]
