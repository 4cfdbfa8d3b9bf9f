"""`audio_ref_only_ic` (ID-LoRA): identity from a reference audio clip and a reference image.

Video: text-to-video with first-frame conditioning (the clean first latent frame is the reference
image). Audio: `[reference audio (clean, t=0, no loss) | target audio (noised)]` in the audio
self-attention; with `use_negative_ref_positions` the reference sits before the target in time.
Optional masks: video queries cannot see reference-audio keys in `audio_to_video_attn`, and
reference-audio queries receive nothing from the text in `audio_attn2`. Padding of variable-length
clips is masked out of the loss and out of every attention as keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ltxdist.strategies.base import StrategyOutput, StreamTargets
from ltxdist.strategies.sigma import SigmaSampler
from ltxdist.strategies.standard import audio_modality, video_modality
from ltxdist.strategies.streams import clean_reference_audio, concat_streams, noised_audio, noised_video
from ltxdist.strategies.video_to_video import ReferenceMismatchError


@dataclass(frozen=True)
class AudioRefOnlyICStrategy:
    sigma_sampler: SigmaSampler = field(default_factory=SigmaSampler)
    first_frame_conditioning_p: float = 0.9
    use_negative_ref_positions: bool = True
    mask_video_to_ref_audio: bool = False
    mask_ref_audio_to_text: bool = False
    name: str = "audio_ref_only_ic"

    def prepare(
        self,
        batch: dict[str, Any],
        *,
        dtype: torch.dtype,
        device: torch.device,
        generators: list[torch.Generator],
    ) -> StrategyOutput:
        for key in ("audio_latents", "reference_audio_latents"):
            if key not in batch:
                raise ReferenceMismatchError(
                    f"samples {batch.get('ids')}: strategy=audio_ref_only_ic needs {key}; prepare the "
                    "data with audio and a reference_audio column"
                )
        lat = batch["video_latents"]
        sigma_B = self.sigma_sampler.sample(lat.shape[2] * lat.shape[3] * lat.shape[4], generators)
        video = noised_video(
            batch,
            sigma_B,
            first_frame_p=self.first_frame_conditioning_p,
            generators=generators,
            dtype=dtype,
            device=device,
        )
        # audio shares the video sigma: one noise level for the clip, as in joint generation
        target = noised_audio(batch, sigma_B, generators=generators, device=device)
        reference = clean_reference_audio(
            batch, negative_positions=self.use_negative_ref_positions, device=device
        )
        seq = concat_streams(reference, target)
        t_ref = reference.latent_BTC.shape[1]
        out = StrategyOutput(
            video=video_modality(video, sigma_B, batch, dtype, device),
            audio=audio_modality(seq, sigma_B, batch, dtype, device),
            video_targets=StreamTargets(video.target_BTC, video.loss_mask_BT, sigma_B),
            audio_targets=StreamTargets(
                target.target_BTC, target.loss_mask_BT, sigma_B, pred_slice=slice(t_ref, None)
            ),
        )
        out.key_keep, out.query_keep = id_lora_masks(
            seq.key_keep_BT,
            t_ref,
            padded=batch.get("audio_padded", False) or batch.get("reference_audio_padded", False),
            mask_video_to_ref_audio=self.mask_video_to_ref_audio,
            mask_ref_audio_to_text=self.mask_ref_audio_to_text,
        )
        return out


def id_lora_masks(
    keep_BT: torch.Tensor,
    t_ref: int,
    *,
    padded: bool,
    mask_video_to_ref_audio: bool,
    mask_ref_audio_to_text: bool,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Masks for an audio sequence `[reference (t_ref tokens) | target]`; shared with sampling so the
    masks used in training are the ones applied at inference."""
    key_keep: dict[str, torch.Tensor] = {}
    query_keep: dict[str, torch.Tensor] = {}
    if padded:
        key_keep["audio_attn1"] = keep_BT
    a2v_keep = keep_BT
    if mask_video_to_ref_audio:
        a2v_keep = keep_BT.clone()
        a2v_keep[:, :t_ref] = False
    if padded or mask_video_to_ref_audio:
        key_keep["audio_to_video_attn"] = a2v_keep
    if mask_ref_audio_to_text:
        q = torch.ones_like(keep_BT)
        q[:, :t_ref] = False
        query_keep["audio_attn2"] = q
    return key_keep, query_keep
