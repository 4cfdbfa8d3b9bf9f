"""Gemma in 8 bits (`--text-encoder-precision`, `validation.text_encoder_precision`): the Linear weights
are stored in 8 bits and the cached text embeddings stay within a stated bound of the full-precision ones."""

from __future__ import annotations

import pytest
import torch

from ltxdist.encoders.text import load_text_encoder
from ltxdist.quant.formats import STORAGE_DTYPES

# Relative L2 error of the video / audio context of one prompt against the fp32 encoder (tiny Gemma with
# random weights, errors compounding over its layers; measured 0.079 for fp8 and 0.020 for int8).
BOUNDS = {"fp8": 0.12, "int8": 0.03}
PROMPT = "a red fox runs through snow, then stops and looks at the camera"


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("precision", list(BOUNDS))
def test_8bit_text_encoder_stays_within_the_bound(tiny_model, encoders, precision):
    text = load_text_encoder(
        tiny_model.checkpoint,
        tiny_model.gemma,
        device=torch.device("cpu"),
        dtype=torch.float32,
        precision=precision,
    )
    linears = [m for n, m in text.gemma.model.named_modules() if isinstance(m, torch.nn.Linear)]
    stored = {m.weight.dtype for m in linears}
    assert STORAGE_DTYPES[precision] in stored and stored <= {STORAGE_DTYPES[precision], torch.float32}
    ref = encoders.text.encode(PROMPT)
    got = text.encode(PROMPT)
    for name in ("video_context", "audio_context"):
        err = _rel(getattr(got, name), getattr(ref, name))
        assert 0 < err < BOUNDS[precision], (precision, name, err)
    assert torch.equal(got.context_mask, ref.context_mask)
