"""Hand-built cached samples for strategy tests: a small latent grid, joint audio, tiny text contexts,
and optional IC reference video / ID reference audio. Seeded by the sample index."""

from __future__ import annotations

import torch

from ltxdist.data.sample import CachedSample


def hand_sample(i, *, f=3, h=2, w=4, ref=None, ref_f=None, audio_t=9, ref_audio_t=None, fps=24.0):
    """Latent video (128, f, h, w) and audio (8, audio_t, 16); `ref`: an IC reference downscaled by that
    factor in H and W (`ref_f` latent frames, default f); `ref_audio_t`: ID reference audio frames."""
    g = torch.Generator().manual_seed(i)
    tensors = {
        "video_latents": torch.randn(128, f, h, w, generator=g),
        "audio_latents": torch.randn(8, audio_t, 16, generator=g),
        "video_context": torch.randn(5, 64, generator=g),
        "audio_context": torch.randn(5, 32, generator=g),
        "context_mask": torch.ones(5, dtype=torch.bool),
    }
    meta = {"id": f"s{i}", "bucket": "128x64x17", "fps": fps, "caption": "c"}
    if ref is not None:
        tensors["reference_video_latents"] = torch.randn(128, ref_f or f, h // ref, w // ref, generator=g)
        meta["reference_downscale_factor"] = ref
    if ref_audio_t is not None:
        tensors["reference_audio_latents"] = torch.randn(8, ref_audio_t, 16, generator=g)
    return CachedSample(tensors=tensors, meta=meta)
