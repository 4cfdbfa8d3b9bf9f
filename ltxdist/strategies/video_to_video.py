"""`video_to_video` (IC-LoRA): `[target (noised) | reference (clean, t=0, no loss)]` in one
self-attention, exactly the layout ltx-core's `VideoConditionByReferenceLatent` builds at inference:
reference tokens appended after the target, reference positions on the reference's own grid from t=0
with H/W multiplied by `reference_downscale_factor` and kept in float32, while the target positions are
rounded to the compute dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ltxdist.strategies.base import StrategyOutput, StreamTargets
from ltxdist.strategies.sigma import SigmaSampler
from ltxdist.strategies.standard import StandardStrategy, video_modality
from ltxdist.strategies.streams import clean_reference_video, concat_streams, noised_video


class ReferenceMismatchError(ValueError):
    """A sample's reference does not fit the strategy; names the sample."""


def check_downscale_factor(batch: dict[str, Any], expected: int) -> None:
    """The reference must be the target downscaled by one integer factor for H and W, equal to the
    configured one (it is written to the LoRA and used again at inference)."""
    tgt, ref = batch["video_latents"].shape, batch["reference_video_latents"].shape
    ids = batch.get("ids", ["?"])
    if tgt[3] % ref[3] or tgt[4] % ref[4] or tgt[3] // ref[3] != tgt[4] // ref[4]:
        raise ReferenceMismatchError(
            f"samples {ids}: reference latent grid {ref[3]}x{ref[4]} is not the target grid "
            f"{tgt[3]}x{tgt[4]} divided by one integer factor for both H and W"
        )
    factor = tgt[3] // ref[3]
    if factor != expected:
        raise ReferenceMismatchError(
            f"samples {ids}: references are downscaled by {factor}, but strategy.reference_downscale_factor="
            f"{expected}; re-prepare the data or set the flag to {factor}"
        )
    for meta in batch.get("meta", []):
        stated = meta.get("reference_downscale_factor")
        if stated is not None and int(stated) != expected:
            raise ReferenceMismatchError(
                f"sample {meta.get('id')}: prepared with reference_downscale_factor={stated}, but "
                f"strategy.reference_downscale_factor={expected}"
            )


@dataclass(frozen=True)
class VideoToVideoStrategy:
    sigma_sampler: SigmaSampler = field(default_factory=SigmaSampler)
    reference_downscale_factor: int = 1
    first_frame_conditioning_p: float = 0.0
    with_audio: bool = False
    audio_sigma: str = "shared"
    name: str = "video_to_video"

    def prepare(
        self,
        batch: dict[str, Any],
        *,
        dtype: torch.dtype,
        device: torch.device,
        generators: list[torch.Generator],
    ) -> StrategyOutput:
        if "reference_video_latents" not in batch:
            raise ReferenceMismatchError(
                f"samples {batch.get('ids')}: strategy=video_to_video needs reference_video_latents; "
                "prepare the data with a reference_video column"
            )
        check_downscale_factor(batch, self.reference_downscale_factor)
        standard = StandardStrategy(
            self.sigma_sampler, self.first_frame_conditioning_p, self.with_audio, self.audio_sigma
        )
        sigma_B = standard.video_sigmas(batch, generators)
        target = noised_video(
            batch,
            sigma_B,
            first_frame_p=self.first_frame_conditioning_p,
            generators=generators,
            dtype=dtype,
            device=device,
        )
        reference = clean_reference_video(
            batch, downscale_factor=self.reference_downscale_factor, device=device
        )
        seq = concat_streams(target, reference)
        t_target = target.latent_BTC.shape[1]
        out = StrategyOutput(
            video=video_modality(seq, sigma_B, batch, dtype, device),
            audio=None,
            video_targets=StreamTargets(
                target.target_BTC, target.loss_mask_BT, sigma_B, pred_slice=slice(0, t_target)
            ),
            audio_targets=None,
        )
        if batch.get("reference_video_padded", False):
            out.key_keep["attn1"] = seq.key_keep_BT  # padded reference frames are never attended to
        standard.add_joint_audio(out, batch, sigma_B, dtype=dtype, device=device, generators=generators)
        if out.audio is not None and batch.get("reference_video_padded", False):
            out.key_keep["video_to_audio_attn"] = seq.key_keep_BT  # audio queries skip padded references
        return out
