"""A tiny LTX-2.3 checkpoint WITH VAEs, vocoder and text connectors, its tiny Gemma, and a Sampler."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

CPU = torch.device("cpu")


@dataclass(frozen=True)
class TinyFull:
    checkpoint: Path
    gemma: Path


@pytest.fixture(scope="session")
def tiny_full(tmp_path_factory: pytest.TempPathFactory) -> TinyFull:
    from ltxdist.models.tiny_checkpoint import write_random_checkpoint
    from ltxdist.models.tiny_encoders import TINY_GEMMA_DIR, write_tiny_gemma

    root = tmp_path_factory.mktemp("tiny_full_sampling")
    ckpt = write_random_checkpoint(root / "ltx-2.3-tiny.safetensors", seed=0, with_encoders=True)
    return TinyFull(ckpt, write_tiny_gemma(root / TINY_GEMMA_DIR, seed=0))


@pytest.fixture(scope="session")
def sampler(tiny_full: TinyFull):
    """fp32 base model (no LoRA) with the tiny VAEs and text encoder."""
    from ltxdist.encoders import AudioVAE, VideoVAE
    from ltxdist.encoders.text import load_text_encoder
    from ltxdist.sampling import Sampler, fused_transformer

    model, _, _ = fused_transformer(tiny_full.checkpoint, [], device=CPU, dtype=torch.float32)
    return Sampler(
        model,
        video_vae=VideoVAE(tiny_full.checkpoint, CPU, torch.float32),
        audio_vae=AudioVAE(tiny_full.checkpoint, CPU, torch.float32),
        text=load_text_encoder(tiny_full.checkpoint, tiny_full.gemma, device=CPU, dtype=torch.float32),
        device=CPU,
        dtype=torch.float32,
    )


@pytest.fixture(scope="session")
def lora_file(tiny_full: TinyFull, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ComfyUI-format LoRA (rank 4, alpha 8, attention + FFN) with random, clearly non-zero B."""
    from ltxdist.lora import LoRASpec, export_lora, inject_lora, lora_modules
    from ltxdist.models import load_transformer

    model = load_transformer(tiny_full.checkpoint, dtype=torch.float32).model
    inject_lora(model, LoRASpec(rank=4, alpha=8, targets=("attn_ff",)))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.copy_(0.3 * torch.randn(m.lora_B.shape, generator=g))
    out = tmp_path_factory.mktemp("lora") / "lora_weights_step_000100.safetensors"
    return export_lora(
        model,
        out,
        base_model_version="2.3.0",
        training_strategy="standard",
        step=100,
        target_modules=["attn_ff"],
    )
