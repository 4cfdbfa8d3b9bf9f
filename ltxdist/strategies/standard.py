"""`standard`: text-to-video with optional joint audio.

All target tokens of a sample share one sigma; with probability `first_frame_conditioning_p` (per
sample) latent frame 0 stays clean (timestep 0, no loss), as in image-to-video inference. Audio tokens
share the video sigma unless `audio_sigma=independent`.

Legend: B batch, T tokens, C channels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ltxdist._ltx_core import Modality
from ltxdist.strategies.base import StrategyOutput, StreamTargets, noised, per_token_timesteps, text_mask
from ltxdist.strategies.positions import (
    audio_positions,
    audio_tokens,
    first_frame_token_mask,
    video_positions,
    video_tokens,
)
from ltxdist.strategies.rng import rand_per_sample, randn_per_sample
from ltxdist.strategies.sigma import SigmaSampler


@dataclass(frozen=True)
class StandardStrategy:
    sigma_sampler: SigmaSampler = field(default_factory=SigmaSampler)
    first_frame_conditioning_p: float = 0.1
    with_audio: bool = True
    audio_sigma: str = "shared"
    name: str = "standard"

    def prepare(
        self,
        batch: dict[str, Any],
        *,
        dtype: torch.dtype,
        device: torch.device,
        generators: list[torch.Generator],
    ) -> StrategyOutput:
        """`generators[b]` drives every random draw of sample b (see strategies/rng.py)."""
        lat_BCFHW = batch["video_latents"].to(device=device, dtype=torch.float32)
        b = lat_BCFHW.shape[0]
        x0_BTC = video_tokens(lat_BCFHW)
        t = x0_BTC.shape[1]

        # All draws happen on the CPU from per-sample generators: same on any device, no GPU sync.
        sigma_B = self.sigma_sampler.sample(t, generators)
        cond_B = rand_per_sample(generators) < self.first_frame_conditioning_p
        noise_BTC = randn_per_sample(tuple(x0_BTC.shape[1:]), generators).to(device)

        clean_BT = None
        if bool(cond_B.any()):
            clean_BT = cond_B.to(device).view(b, 1) & first_frame_token_mask(lat_BCFHW).view(1, t)
        xt_BTC = noised(x0_BTC, noise_BTC, sigma_B.to(device))
        if clean_BT is not None:
            xt_BTC = torch.where(clean_BT.unsqueeze(-1), x0_BTC, xt_BTC)
        video = Modality(
            latent=xt_BTC.to(dtype),
            sigma=sigma_B.to(device),
            timesteps=per_token_timesteps(sigma_B.to(device), clean_BT),
            positions=video_positions(lat_BCFHW, batch["fps"], dtype),
            context=batch["video_context"].to(device=device, dtype=dtype),
            context_mask=text_mask(batch, device),
        )
        loss_mask_BT = torch.ones(b, t, device=device) if clean_BT is None else (~clean_BT).float()
        video_targets = StreamTargets(noise_BTC - x0_BTC, loss_mask_BT, sigma_B)

        audio, audio_targets = None, None
        if self.with_audio and "audio_latents" in batch:
            audio, audio_targets = self._audio(batch, sigma_B, dtype, device, generators)
        return StrategyOutput(
            video=video, audio=audio, video_targets=video_targets, audio_targets=audio_targets
        )

    def _audio(
        self,
        batch: dict[str, Any],
        video_sigma_B: torch.Tensor,
        dtype: torch.dtype,
        device: torch.device,
        generators: list[torch.Generator],
    ) -> tuple[Modality, StreamTargets]:
        lat_BCTM = batch["audio_latents"].to(device=device, dtype=torch.float32)
        x0_BTC = audio_tokens(lat_BCTM)
        b, t, _ = x0_BTC.shape
        sigma_B = video_sigma_B if self.audio_sigma == "shared" else self.sigma_sampler.sample(t, generators)
        noise_BTC = randn_per_sample(tuple(x0_BTC.shape[1:]), generators).to(device)
        audio = Modality(
            latent=noised(x0_BTC, noise_BTC, sigma_B.to(device)).to(dtype),
            sigma=sigma_B.to(device),
            timesteps=sigma_B.to(device).view(b, 1),
            positions=audio_positions(lat_BCTM),
            context=batch["audio_context"].to(device=device, dtype=dtype),
            context_mask=text_mask(batch, device),
        )
        # Padding frames of shorter clips in the batch never enter the loss.
        lengths_B = batch.get("audio_lengths")
        if lengths_B is None:
            mask_BT = torch.ones(b, t, device=device)
        else:
            mask_BT = (torch.arange(t, device=device).view(1, t) < lengths_B.to(device).view(b, 1)).float()
        return audio, StreamTargets(noise_BTC - x0_BTC, mask_BT, sigma_B)
