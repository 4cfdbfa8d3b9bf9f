"""SDPA call types of the LTX block: the backend torch's rules give each (predict_backend), and the plain
attention function that replaces ltx-core's per-call object (sdpa_attention / use_plain_sdpa)."""

from __future__ import annotations

import pytest
import torch
from kernel_test_utils import max_rel_err, seeded
from ltx_core.model.transformer.attention import AttentionFunction, PytorchAttention

from ltxdist._ltx_core import LTXModelConfigurator
from ltxdist.models.presets import transformer_config
from ltxdist.strategies.attention_masks import MaskableAttention, install_maskable_attention
from ltxdist_kernels.sdpa import (
    Device,
    SdpaCall,
    ltx_attention_calls,
    predict_backend,
    sdpa_attention,
    use_plain_sdpa,
)


def test_every_ltx_call_type_reaches_cudnn_on_h200() -> None:
    """At LTX-2.3 shapes (IC 10,752 video tokens; standard 3,570 + 51 audio; SP over 8) with ltxdist's mask
    forms, every call type meets cuDNN's conditions: masks stay broadcast (B, 1, 1, S) biases."""
    for video, audio in ((10752, 0), (3570, 51)):
        calls = ltx_attention_calls(video, audio, sequence_parallel=8)
        assert len(calls) == (6 if audio == 0 else 12)
        for name, call in calls.items():
            backend, skipped = predict_backend(call)
            assert backend == "cudnn", (name, skipped)


def test_what_pushes_a_call_off_the_fast_backends() -> None:
    plain = SdpaCall(1, 32, 3570, 3570, 128)
    masked = SdpaCall(1, 32, 3570, 3570, 128, mask_shape=(1, 1, 1, 3570))
    old_cudnn = Device(cudnn_version=90100)  # cuDNN not preferred: flash first
    assert predict_backend(plain, old_cudnn)[0] == "flash"
    backend, skipped = predict_backend(masked, old_cudnn)
    assert backend == "efficient" and "an attn_mask" in skipped[0]  # the 3.7x slower backend on H200
    assert predict_backend(SdpaCall(1, 32, 64, 64, 128, dtype=torch.float32))[0] == "efficient"
    assert predict_backend(SdpaCall(1, 32, 64, 64, 128, last_dim_contiguous=False))[0] == "math"
    assert predict_backend(SdpaCall(1, 32, 64, 64, 128, mask_shape=(1, 32, 64, 7)))[0] == "math"
    assert (
        predict_backend(SdpaCall(1, 32, 64, 64, 128, mask_shape=(1, 1, 1, 64), mask_requires_grad=True))[0]
        == "efficient"
    )
    assert predict_backend(masked, Device(deterministic=True))[0] == "efficient"
    assert predict_backend(SdpaCall(1, 32, 64, 1, 128))[0] == "flash"  # cuDNN needs >= 2 keys


@pytest.mark.parametrize("mask_ndim", [None, 2, 3, 4])
def test_sdpa_attention_matches_ltx_core(mask_ndim) -> None:
    gen = seeded("sdpa", mask_ndim)
    B, T, S, H, D = 2, 7, 5, 3, 8
    q = torch.randn(B, T, H * D, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(B, S, H * D, generator=gen, dtype=torch.float64) for _ in range(2))
    mask = None
    if mask_ndim is not None:
        full = torch.randn(B, 1, T, S, generator=gen, dtype=torch.float64)
        mask = {2: full[0, 0], 3: full[:, 0], 4: full}[mask_ndim]
    want = PytorchAttention()(q, k, v, H, mask)
    got = sdpa_attention(q, k, v, H, mask)
    assert max_rel_err(got, want) < 1e-12
    wrong = sdpa_attention(
        q, k, v, H, None if mask is not None else torch.ones(T, S, dtype=torch.float64) * 3
    )
    if mask is not None:
        assert max_rel_err(wrong, want) > 1e-3  # the mask really matters in this comparison


def test_use_plain_sdpa_replaces_the_innermost_function_only() -> None:
    model = LTXModelConfigurator.from_config(transformer_config("tiny", num_layers=1))
    install_maskable_attention(model)  # wrappers stay around the replaced function
    replaced = use_plain_sdpa(model)
    block = model.transformer_blocks[0]
    assert replaced == 6
    assert isinstance(block.attn1.attention_function, MaskableAttention)
    assert block.attn1.attention_function.inner is sdpa_attention
    assert block.attn2.attention_function is sdpa_attention  # attn2 takes no strategy mask
    assert use_plain_sdpa(model) == 0  # idempotent
    assert AttentionFunction.PYTORCH not in {
        m.attention_function for m in model.modules() if hasattr(m, "heads")
    }
