"""Classifier-free guidance with a negative prompt and spatio-temporal guidance, through ltx-core.

Each denoising step runs the model up to four times on the same latents, and ltx-core's
`MultiModalGuider.calculate` combines the x0 (denoised) predictions per modality:

    x0 = cond + (cfg - 1) (cond - uncond) + stg (cond - perturbed) + (modality - 1) (cond - isolated)

followed by an optional rescale towards the std of `cond` (`rescale_scale`).

- cond: the prompt; uncond: the negative prompt's context on the same latents;
- perturbed (STG): self-attention skipped in the chosen blocks, via ltx-core's
  `PerturbationType.SKIP_VIDEO_SELF_ATTN` / `SKIP_AUDIO_SELF_ATTN` (the attention output is replaced
  by its value projection);
- isolated: both audio<->video cross-attentions skipped in every block.

A pass runs only when one of the modalities needs it, as in ltx-pipelines. Video and audio have their
own parameters (ltx-pipelines' LTX-2.3 defaults: video cfg 3, audio cfg 7, stg 1 on block 28, rescale
0.7, modality 3).

Identity guidance (ID-LoRA's inference, for a reference voice prepended to the audio): one more pass on
the same latents with the reference tokens removed, and on the target audio tokens

    x0_a += identity (cond_a - without_reference_a)

added after ltx-core's combination (and its rescale; ID-LoRA's inference has none, so with rescale 0 the
result is ID-LoRA's). The attention masks that concern the reference are cleared for that pass: there
is no reference in it.
Legend: B batch (always 1 here), T tokens, C channels, S text tokens.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from ltx_core.components.guiders import MultiModalGuider, MultiModalGuiderParams
from ltx_core.guidance.perturbations import Perturbation, PerturbationConfig, PerturbationType
from ltx_core.utils import to_denoised

from ltxdist._ltx_core import BatchedPerturbationConfig, Modality
from ltxdist.sampling.defaults import ID_LORA_IDENTITY_GUIDANCE  # noqa: F401  (re-exported)
from ltxdist.strategies.attention_masks import set_attention_masks


@dataclass(frozen=True)
class GuidanceParams:
    cfg_scale: float = 1.0
    stg_scale: float = 0.0
    stg_blocks: tuple[int, ...] = ()
    rescale_scale: float = 0.0
    modality_scale: float = 1.0

    def ltx_params(self) -> MultiModalGuiderParams:
        return MultiModalGuiderParams(
            cfg_scale=self.cfg_scale,
            stg_scale=self.stg_scale,
            stg_blocks=list(self.stg_blocks),
            rescale_scale=self.rescale_scale,
            modality_scale=self.modality_scale,
        )

    def check(self, num_blocks: int, flag: str) -> None:
        """User errors name the flag: STG on a block the model does not have would silently do nothing."""
        if self.stg_scale == 0:
            return  # blocks unused
        if not self.stg_blocks:
            raise ValueError(f"{flag}: STG scale {self.stg_scale} needs at least one block (--stg-blocks)")
        bad = [b for b in self.stg_blocks if not 0 <= b < num_blocks]
        if bad:
            raise ValueError(
                f"{flag}: STG blocks {bad} do not exist; the model has blocks 0..{num_blocks - 1}"
            )


@dataclass(frozen=True)
class TextContext:
    """One prompt's encoder output as the transformer takes it (batch 1)."""

    video_BSC: torch.Tensor
    audio_BSC: torch.Tensor
    mask_BS: torch.Tensor | None = None  # None: every token attended (keeps the fast SDPA path)


@dataclass(frozen=True)
class Guidance:
    video: GuidanceParams = field(default_factory=GuidanceParams)
    audio: GuidanceParams = field(default_factory=GuidanceParams)
    identity_scale: float = 0.0  # ID-LoRA identity guidance (needs a reference voice; 0 = off)

    def guiders(self) -> tuple[MultiModalGuider, MultiModalGuider]:
        return MultiModalGuider(self.video.ltx_params()), MultiModalGuider(self.audio.ltx_params())


def stg_perturbations(guidance: Guidance, batch: int = 1) -> BatchedPerturbationConfig:
    """The perturbed pass: skip video (audio) self-attention in the video (audio) STG blocks."""
    perturbations = []
    if not math.isclose(guidance.video.stg_scale, 0.0):
        perturbations.append(
            Perturbation(PerturbationType.SKIP_VIDEO_SELF_ATTN, list(guidance.video.stg_blocks))
        )
    if not math.isclose(guidance.audio.stg_scale, 0.0):
        perturbations.append(
            Perturbation(PerturbationType.SKIP_AUDIO_SELF_ATTN, list(guidance.audio.stg_blocks))
        )
    return BatchedPerturbationConfig([PerturbationConfig(perturbations) for _ in range(batch)])


def isolated_modality_perturbations(batch: int = 1) -> BatchedPerturbationConfig:
    """The isolated pass: no audio->video and no video->audio attention anywhere."""
    both = [
        Perturbation(PerturbationType.SKIP_A2V_CROSS_ATTN, None),
        Perturbation(PerturbationType.SKIP_V2A_CROSS_ATTN, None),
    ]
    return BatchedPerturbationConfig([PerturbationConfig(both) for _ in range(batch)])


def _with_context(m: Modality | None, context: torch.Tensor, mask: torch.Tensor | None) -> Modality | None:
    if m is None:
        return None
    return Modality(
        latent=m.latent,
        sigma=m.sigma,
        timesteps=m.timesteps,
        positions=m.positions,
        context=context.to(m.context.dtype),
        enabled=m.enabled,
        context_mask=mask,
        attention_mask=m.attention_mask,
    )


class X0Predictor:
    """Velocity model -> x0 = x - v * t, with t the per-token timestep (0 on clean conditioning tokens,
    so their prediction is the clean latent itself)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.forward_passes = 0  # counted for tests and for the cost of a guidance setting

    def __call__(
        self,
        video: Modality | None,
        audio: Modality | None,
        perturbations: BatchedPerturbationConfig,
        t_video_BT1: torch.Tensor | None,
        t_audio_BT1: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        self.forward_passes += 1
        vx, ax = self.model(video, audio, perturbations)
        x0_v = to_denoised(video.latent, vx, t_video_BT1) if video is not None else None
        x0_a = to_denoised(audio.latent, ax, t_audio_BT1) if audio is not None else None
        return x0_v, x0_a


@dataclass(frozen=True)
class AudioReference:
    """The clean reference voice at the start of the audio sequence (ID-LoRA) and the attention masks
    set for the whole sequence (restored after the identity pass, which runs without them)."""

    tokens: int
    key_keep: dict[str, torch.Tensor] = field(default_factory=dict)
    query_keep: dict[str, torch.Tensor] = field(default_factory=dict)


def drop_reference_timesteps(timesteps: torch.Tensor, tokens: int) -> torch.Tensor:
    """Per-token timesteps without the first `tokens`; a single shared timestep stays as it is."""
    return timesteps if timesteps.shape[1] == 1 else timesteps[:, tokens:]


def without_reference(audio: Modality, tokens: int) -> Modality:
    """The same audio input with its first `tokens` (the reference voice) removed: same noisy latents,
    timesteps, positions and context for the target tokens."""
    return dataclasses.replace(
        audio,
        latent=audio.latent[:, tokens:],
        timesteps=drop_reference_timesteps(audio.timesteps, tokens),
        positions=audio.positions[:, :, tokens:],
        attention_mask=None,
    )


def guided_x0(
    predict: X0Predictor,
    video: Modality,
    audio: Modality | None,
    *,
    t_video_BT1: torch.Tensor,
    t_audio_BT1: torch.Tensor | None,
    guidance: Guidance,
    negative: TextContext | None,
    reference: AudioReference | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Guided x0 predictions (video, audio) for one step; `video`/`audio` carry the prompt's context.
    With `reference` (a reference voice leading the audio) and `guidance.identity_scale` != 0, also
    the identity guidance pass."""
    vg, ag = guidance.guiders()
    use_audio = audio is not None
    b = video.latent.shape[0]
    ts = (t_video_BT1, t_audio_BT1)
    cond_v, cond_a = predict(video, audio, BatchedPerturbationConfig.empty(b), *ts)

    def wants(check: str) -> bool:
        return getattr(vg, check)() or (use_audio and getattr(ag, check)())

    uncond_v: torch.Tensor | float = 0.0
    uncond_a: torch.Tensor | float = 0.0
    if wants("do_unconditional_generation"):
        if negative is None:
            raise ValueError("CFG scale != 1 needs a negative prompt context")
        uncond_v, uncond_a = predict(
            _with_context(video, negative.video_BSC, negative.mask_BS),
            _with_context(audio, negative.audio_BSC, negative.mask_BS),
            BatchedPerturbationConfig.empty(b),
            *ts,
        )
    ptb_v: torch.Tensor | float = 0.0
    ptb_a: torch.Tensor | float = 0.0
    if wants("do_perturbed_generation"):
        ptb_v, ptb_a = predict(video, audio, stg_perturbations(guidance, b), *ts)
    iso_v: torch.Tensor | float = 0.0
    iso_a: torch.Tensor | float = 0.0
    if use_audio and wants("do_isolated_modality_generation"):
        iso_v, iso_a = predict(video, audio, isolated_modality_perturbations(b), *ts)

    x0_v = vg.calculate(cond_v, uncond_v, ptb_v, iso_v)
    if not use_audio:
        return x0_v, None
    assert audio is not None and cond_a is not None and t_audio_BT1 is not None
    x0_a = ag.calculate(cond_a, uncond_a, ptb_a, iso_a)
    if reference is not None and reference.tokens > 0 and guidance.identity_scale != 0:
        r = reference.tokens
        set_attention_masks(predict.model)  # the masks describe the reference, absent from this pass
        try:
            t_target = drop_reference_timesteps(t_audio_BT1, r)
            empty = BatchedPerturbationConfig.empty(b)
            _, noref_a = predict(video, without_reference(audio, r), empty, t_video_BT1, t_target)
        finally:
            set_attention_masks(predict.model, reference.key_keep, reference.query_keep)
        assert noref_a is not None
        identity_a = guidance.identity_scale * (cond_a[:, r:] - noref_a)
        x0_a = torch.cat([x0_a[:, :r], x0_a[:, r:] + identity_a], dim=1)
    return x0_v, x0_a
