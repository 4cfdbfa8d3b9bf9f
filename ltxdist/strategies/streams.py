"""Building blocks shared by the strategies: a noised target stream and a clean reference stream.

A stream is a token sequence with its positions, per-token timesteps and loss mask. Strategies
concatenate streams (target and reference share one self-attention) and turn them into `Modality`s.

Legend: B batch, T tokens, C channels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ltxdist.strategies.base import noised
from ltxdist.strategies.positions import (
    audio_positions,
    audio_tokens,
    first_frame_token_mask,
    video_positions,
    video_tokens,
)
from ltxdist.strategies.rng import rand_per_sample, randn_per_sample


@dataclass
class Stream:
    latent_BTC: torch.Tensor  # model input (noised target or clean reference), float32
    target_BTC: torch.Tensor | None  # velocity target (None for references)
    timesteps_BT: torch.Tensor  # sigma per token, 0 on clean tokens
    positions: torch.Tensor  # (B, n_axes, T, 2)
    loss_mask_BT: torch.Tensor  # 1 where the token is trained
    key_keep_BT: torch.Tensor  # False on padding tokens (never attended to)
    any_clean: bool  # some token is clean conditioning (decided on the CPU: no device sync)


def lengths_mask(
    lengths_B: torch.Tensor | None, b: int, t: int, per_step: int, device: torch.device
) -> torch.Tensor:
    """(B, T) True for real tokens when each sample has lengths_B[b] time steps of `per_step` tokens."""
    if lengths_B is None:
        return torch.ones(b, t, dtype=torch.bool, device=device)
    return torch.arange(t, device=device).view(1, t) < (lengths_B.to(device) * per_step).view(b, 1)


def noised_video(
    batch: dict[str, Any],
    sigma_B: torch.Tensor,
    *,
    first_frame_p: float,
    generators: list[torch.Generator],
    dtype: torch.dtype,
    device: torch.device,
) -> Stream:
    """Target video: noised with one sigma per sample; frame 0 kept clean with probability p."""
    lat_BCFHW = batch["video_latents"].to(device=device, dtype=torch.float32)
    b = lat_BCFHW.shape[0]
    x0_BTC = video_tokens(lat_BCFHW)
    t = x0_BTC.shape[1]
    # Draw order per sample (fixed so runs reproduce): conditioning coin, then noise.
    cond_B = rand_per_sample(generators) < first_frame_p
    if lat_BCFHW.shape[2] == 1:
        # One latent frame (an image, or a bucket of 1-8 pixel frames) is all "first frame": kept clean, the
        # sample would train nothing yet count in the batch mean. The coin is still drawn (same streams).
        cond_B = torch.zeros_like(cond_B)
    noise_BTC = randn_per_sample(tuple(x0_BTC.shape[1:]), generators).to(device)
    any_clean = bool(cond_B.any())
    clean_BT = torch.zeros(b, t, dtype=torch.bool, device=device)
    if any_clean:
        clean_BT = cond_B.to(device).view(b, 1) & first_frame_token_mask(lat_BCFHW).view(1, t)
    sigma_dev = sigma_B.to(device)
    xt_BTC = torch.where(clean_BT.unsqueeze(-1), x0_BTC, noised(x0_BTC, noise_BTC, sigma_dev))
    return Stream(
        latent_BTC=xt_BTC,
        target_BTC=noise_BTC - x0_BTC,
        timesteps_BT=sigma_dev.view(b, 1) * (~clean_BT).float(),
        # Rounded to the compute dtype, as ltx-core's VideoLatentTools rounds the generated video's.
        positions=video_positions(lat_BCFHW, batch["fps"], dtype),
        loss_mask_BT=(~clean_BT).float(),
        key_keep_BT=torch.ones(b, t, dtype=torch.bool, device=device),
        any_clean=any_clean,
    )


def clean_reference_video(batch: dict[str, Any], *, downscale_factor: int, device: torch.device) -> Stream:
    """Reference video tokens: clean (timestep 0), no loss, on their own grid from t=0 with H/W scaled
    by the downscale factor, positions kept in float32 as ltx-core's VideoConditionByReferenceLatent."""
    lat_BCFHW = batch["reference_video_latents"].to(device=device, dtype=torch.float32)
    b, _, _, h, w = lat_BCFHW.shape
    x_BTC = video_tokens(lat_BCFHW)
    t = x_BTC.shape[1]
    keep_BT = lengths_mask(batch.get("reference_video_lengths"), b, t, h * w, device)
    return Stream(
        latent_BTC=x_BTC,
        target_BTC=None,
        timesteps_BT=torch.zeros(b, t, device=device),
        positions=video_positions(lat_BCFHW, batch["fps"], torch.float32, spatial_scale=downscale_factor),
        loss_mask_BT=torch.zeros(b, t, device=device),
        key_keep_BT=keep_BT,
        any_clean=True,
    )


def noised_audio(
    batch: dict[str, Any], sigma_B: torch.Tensor, *, generators: list[torch.Generator], device: torch.device
) -> Stream:
    """Target audio, noised with `sigma_B`; padding frames of shorter clips are masked everywhere."""
    lat_BCTM = batch["audio_latents"].to(device=device, dtype=torch.float32)
    x0_BTC = audio_tokens(lat_BCTM)
    b, t, _ = x0_BTC.shape
    noise_BTC = randn_per_sample(tuple(x0_BTC.shape[1:]), generators).to(device)
    keep_BT = lengths_mask(batch.get("audio_lengths"), b, t, 1, device)
    sigma_dev = sigma_B.to(device)
    return Stream(
        latent_BTC=noised(x0_BTC, noise_BTC, sigma_dev),
        target_BTC=noise_BTC - x0_BTC,
        timesteps_BT=sigma_dev.view(b, 1).expand(b, t),
        positions=audio_positions(lat_BCTM),
        loss_mask_BT=keep_BT.float(),
        key_keep_BT=keep_BT,
        any_clean=False,
    )


# Gap between the end of the reference audio and the start of the target (t = 0) with negative positions.
NEGATIVE_REFERENCE_GAP_S = 0.04


def clean_reference_audio(batch: dict[str, Any], *, negative_positions: bool, device: torch.device) -> Stream:
    """Reference audio: clean, no loss. With `negative_positions` it sits before the target, its real
    tokens spanning [-span - 0.04 s, -0.04 s) instead of overlapping the target from t = 0.

    The shift is anchored on the end bound of each sample's LAST REAL token, not on T / 25: ltx-core's
    causal audio grid starts frame 0 at 0 s but ends frame k at (4k + 1) * 10 ms, so T frames end at
    T / 25 - 0.03 s, and a T / 25 + 0.04 s shift would leave a 0.07 s gap. Padding tokens of shorter
    references (never attended to) move with their sample and land after -0.04 s.
    """
    lat_BCTM = batch["reference_audio_latents"].to(device=device, dtype=torch.float32)
    x_BTC = audio_tokens(lat_BCTM)
    b, t, _ = x_BTC.shape
    lengths_B = batch.get("reference_audio_lengths")
    keep_BT = lengths_mask(lengths_B, b, t, 1, device)
    positions = audio_positions(lat_BCTM)  # (B, 1, T, 2), float32 seconds
    if negative_positions:
        last_B = (
            lengths_B.to(device=device, dtype=torch.long) - 1
            if lengths_B is not None
            else torch.full((b,), t - 1, device=device, dtype=torch.long)
        )
        last_end_B = positions[torch.arange(b, device=device), 0, last_B, 1]
        positions = positions - (last_end_B + NEGATIVE_REFERENCE_GAP_S).view(b, 1, 1, 1)
    return Stream(
        latent_BTC=x_BTC,
        target_BTC=None,
        timesteps_BT=torch.zeros(b, t, device=device),
        positions=positions,
        loss_mask_BT=torch.zeros(b, t, device=device),
        key_keep_BT=keep_BT,
        any_clean=True,
    )


def concat_streams(*streams: Stream) -> Stream:
    """One self-attention sequence: tokens, positions (promoted to the widest dtype, as torch.cat does in
    ltx-core's conditioning), timesteps, masks."""
    return Stream(
        latent_BTC=torch.cat([s.latent_BTC for s in streams], dim=1),
        target_BTC=None,
        timesteps_BT=torch.cat([s.timesteps_BT for s in streams], dim=1),
        positions=torch.cat([s.positions for s in streams], dim=2),
        loss_mask_BT=torch.cat([s.loss_mask_BT for s in streams], dim=1),
        key_keep_BT=torch.cat([s.key_keep_BT for s in streams], dim=1),
        any_clean=any(s.any_clean for s in streams),
    )
