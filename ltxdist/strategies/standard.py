"""`standard`: text-to-video with optional joint audio.

All target tokens of a sample share one sigma; with probability `first_frame_conditioning_p` (per
sample) latent frame 0 stays clean (timestep 0, no loss), as in image-to-video inference. Audio tokens
share the video sigma unless `audio_sigma=independent`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ltxdist._ltx_core import Modality
from ltxdist.strategies.base import StrategyOutput, StreamTargets, compact_timesteps, text_mask
from ltxdist.strategies.sigma import SigmaSampler
from ltxdist.strategies.streams import Stream, noised_audio, noised_video


def stream_modality(
    stream: Stream,
    sigma_B: torch.Tensor,
    context_BSD: torch.Tensor,
    batch: dict[str, Any],
    dtype: torch.dtype,
    device: torch.device,
) -> Modality:
    """ltx-core's model input for one stream (video or audio) with its text context."""
    return Modality(
        latent=stream.latent_BTC.to(dtype),
        sigma=sigma_B.to(device),
        timesteps=compact_timesteps(stream.timesteps_BT, stream.any_clean),
        positions=stream.positions,
        context=context_BSD.to(device=device, dtype=dtype),
        context_mask=text_mask(batch, device),
    )


def video_modality(
    stream: Stream, sigma_B: torch.Tensor, batch: dict[str, Any], dtype: torch.dtype, device: torch.device
) -> Modality:
    return stream_modality(stream, sigma_B, batch["video_context"], batch, dtype, device)


def audio_modality(
    stream: Stream, sigma_B: torch.Tensor, batch: dict[str, Any], dtype: torch.dtype, device: torch.device
) -> Modality:
    return stream_modality(stream, sigma_B, batch["audio_context"], batch, dtype, device)


@dataclass(frozen=True)
class StandardStrategy:
    sigma_sampler: SigmaSampler = field(default_factory=SigmaSampler)
    first_frame_conditioning_p: float = 0.1
    with_audio: bool = True
    audio_sigma: str = "shared"
    name: str = "standard"

    def video_sigmas(self, batch: dict[str, Any], generators: list[torch.Generator]) -> torch.Tensor:
        lat = batch["video_latents"]
        return self.sigma_sampler.sample(lat.shape[2] * lat.shape[3] * lat.shape[4], generators)

    def audio_sigmas(
        self, batch: dict[str, Any], video_sigma_B: torch.Tensor, generators: list[torch.Generator]
    ) -> torch.Tensor:
        if self.audio_sigma == "shared":
            return video_sigma_B
        # Each sample's own audio length sets its shift, not the batch's padded length: a sample's draws
        # never depend on what it is batched with (strategies/rng.py).
        padded = batch["audio_latents"].shape[2]
        lengths = batch.get("audio_lengths")
        tokens = [padded] * len(generators) if lengths is None else [int(n) for n in lengths]
        return torch.tensor(
            [self.sigma_sampler.sample_one(n, g) for n, g in zip(tokens, generators, strict=True)],
            dtype=torch.float32,
        )

    def prepare(
        self,
        batch: dict[str, Any],
        *,
        dtype: torch.dtype,
        device: torch.device,
        generators: list[torch.Generator],
    ) -> StrategyOutput:
        """`generators[b]` drives every random draw of sample b (see strategies/rng.py)."""
        sigma_B = self.video_sigmas(batch, generators)
        v = noised_video(
            batch,
            sigma_B,
            first_frame_p=self.first_frame_conditioning_p,
            generators=generators,
            dtype=dtype,
            device=device,
        )
        out = StrategyOutput(
            video=video_modality(v, sigma_B, batch, dtype, device),
            audio=None,
            video_targets=StreamTargets(v.target_BTC, v.loss_mask_BT, sigma_B),
            audio_targets=None,
        )
        self.add_joint_audio(out, batch, sigma_B, dtype=dtype, device=device, generators=generators)
        return out

    def add_joint_audio(
        self,
        out: StrategyOutput,
        batch: dict[str, Any],
        video_sigma_B: torch.Tensor,
        *,
        dtype: torch.dtype,
        device: torch.device,
        generators: list[torch.Generator],
    ) -> None:
        """Add the noised target audio stream to `out` when configured and present in the batch."""
        if not (self.with_audio and "audio_latents" in batch):
            return
        a_sigma_B = self.audio_sigmas(batch, video_sigma_B, generators)
        a = noised_audio(batch, a_sigma_B, generators=generators, device=device)
        out.audio = audio_modality(a, a_sigma_B, batch, dtype, device)
        out.audio_targets = StreamTargets(a.target_BTC, a.loss_mask_BT, a_sigma_B)
        if batch.get("audio_padded", False):
            # padded audio frames are neither trained nor attended to
            out.key_keep.update(audio_attn1=a.key_keep_BT, audio_to_video_attn=a.key_keep_BT)
