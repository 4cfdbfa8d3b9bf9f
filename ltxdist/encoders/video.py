"""Video VAE: pixels <-> cached latents, with ltx-core's encoder and decoder.

Legend: F,H,W pixel frames/height/width; F',H',W' latent (F' = 1 + (F-1)/8, H' = H/32, W' = W/32).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ltxdist.encoders.components import VIDEO_DECODER, VIDEO_ENCODER
from ltxdist.encoders.loading import build_component


def frames_to_pixels(frames_FHWC: torch.Tensor) -> torch.Tensor:
    """uint8 frames (F, H, W, 3) -> (1, 3, F, H, W) in [-1, 1], the VAE's input range."""
    x = frames_FHWC.permute(3, 0, 1, 2).unsqueeze(0).float()
    return x / 127.5 - 1.0


class VideoVAE:
    def __init__(self, checkpoint: str | Path, device: torch.device, dtype: torch.dtype):
        self.checkpoint, self.device, self.dtype = Path(checkpoint), device, dtype
        self._encoder: torch.nn.Module | None = None
        self._decoder: torch.nn.Module | None = None

    @property
    def encoder(self) -> torch.nn.Module:
        if self._encoder is None:
            self._encoder = build_component(
                self.checkpoint, VIDEO_ENCODER, device=self.device, dtype=self.dtype
            )
        return self._encoder

    def release_encoder(self) -> None:
        """Drop the encoder (its weights live on `device`); a later `encode` builds it again."""
        self._encoder = None

    @property
    def decoder(self) -> torch.nn.Module:
        if self._decoder is None:
            self._decoder = build_component(
                self.checkpoint, VIDEO_DECODER, device=self.device, dtype=self.dtype
            )
        return self._decoder

    @torch.inference_mode()
    def encode(self, frames_FHWC: torch.Tensor) -> torch.Tensor:
        """uint8 (F, H, W, 3) with F = 8n+1 and H, W multiples of 32 -> normalized means (128, F', H', W')."""
        f, h, w, _ = frames_FHWC.shape
        if (f - 1) % 8 or h % 32 or w % 32:
            # ltx-core would silently crop frames; a wrong count here is a bug upstream, not user input.
            raise ValueError(f"video VAE input must be (8n+1) x (32k) x (32k), got F={f} H={h} W={w}")
        x = frames_to_pixels(frames_FHWC).to(self.device, self.dtype)
        return self.encoder(x)[0].float().cpu()

    @torch.inference_mode()
    def decode(self, latents_CFHW: torch.Tensor) -> torch.Tensor:
        """(128, F', H', W') -> uint8 frames (F, H, W, 3)."""
        from ltx_core.model.video_vae import decode_video

        z = latents_CFHW.unsqueeze(0).to(self.device, self.dtype)
        chunks = list(decode_video(z, self.decoder, generator=torch.Generator(self.device).manual_seed(0)))
        return torch.cat([c.cpu() for c in chunks])
