"""ltx-core's video VAE, audio VAE (+ vocoder) and Gemma text encoder, built from an LTX-2.3 checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ltxdist.encoders.audio import AudioVAE
from ltxdist.encoders.fingerprint import checkpoint_component_fingerprint, folder_fingerprint
from ltxdist.encoders.text import (
    TextEncoder,
    TextEncoding,
    check_gemma_root,
    default_text_tokens,
    load_text_encoder,
)
from ltxdist.encoders.video import VideoVAE
from ltxdist.models.checkpoint_file import read_checkpoint_info

__all__ = [
    "AudioVAE",
    "EncoderSet",
    "TextEncoder",
    "TextEncoding",
    "VideoVAE",
    "check_gemma_root",
    "default_text_tokens",
    "encoder_fingerprints",
    "pick_device",
    "pick_dtype",
]


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return (
            torch.device("cuda", torch.cuda.current_device())
            if torch.cuda.is_available()
            else torch.device("cpu")
        )
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """bf16 on GPU (as ltx-pipelines runs the encoders); fp32 on CPU, where bf16 convolutions are slow."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def encoder_fingerprints(checkpoint: str | Path, gemma_root: str | Path, text_tokens: int) -> dict[str, str]:
    """Cheap fingerprints of every encoder a cached sample depends on (no weights are loaded)."""
    check_gemma_root(Path(gemma_root))
    info = read_checkpoint_info(checkpoint)
    return {
        "video_vae": checkpoint_component_fingerprint(info.path, info.config, ("vae.",), ("vae",)),
        "audio_vae": checkpoint_component_fingerprint(
            info.path, info.config, ("audio_vae.",), ("audio_vae",)
        ),
        "text_connectors": checkpoint_component_fingerprint(
            info.path,
            info.config,
            (
                "text_embedding_projection.",
                "model.diffusion_model.video_embeddings_connector.",
                "model.diffusion_model.audio_embeddings_connector.",
            ),
            ("transformer",),
        ),
        "gemma": folder_fingerprint(Path(gemma_root), text_tokens),
    }


@dataclass
class EncoderSet:
    video: VideoVAE
    audio: AudioVAE
    text: TextEncoder
    model_version: str
    fingerprints: dict[str, str]

    @classmethod
    def load(
        cls,
        checkpoint: str | Path,
        gemma_root: str | Path,
        *,
        device: torch.device,
        dtype: torch.dtype,
        text_tokens: int | None = None,
        text_precision: str = "bf16",
    ) -> EncoderSet:
        info = read_checkpoint_info(checkpoint)
        tokens = text_tokens or default_text_tokens(Path(gemma_root))
        text = load_text_encoder(
            checkpoint, gemma_root, device=device, dtype=dtype, text_tokens=tokens, precision=text_precision
        )
        return cls(
            video=VideoVAE(checkpoint, device, dtype),
            audio=AudioVAE(checkpoint, device, dtype),
            text=text,
            model_version=info.model_version,
            fingerprints=encoder_fingerprints(checkpoint, gemma_root, tokens),
        )
