"""Initial latent states for sampling, with the same conditioning layout the LoRA was trained on.

Built from ltx-core's own pieces: `VideoLatentTools` / `AudioLatentTools` (token order, positions in
seconds and pixels, positions of the generated video rounded to the compute dtype), `GaussianNoiser`
(noise only where the denoise mask is 1), `VideoConditionByLatentIndex` (a clean first frame) and
`VideoConditionByReferenceLatent` (IC-LoRA reference appended after the target, H/W positions scaled by
the downscale factor, kept in float32).

ltx-core has no conditioning item for an ID-LoRA reference voice, so it is built here from the very
function the `audio_ref_only_ic` training strategy uses (`clean_reference_audio`): the reference is
PREPENDED to the target audio, clean (timestep 0), optionally at negative times; the strategy's
attention masks come from `id_lora_masks`, shared with training.
Legend: B batch (1), C channels, F/H/W latent frames/height/width, T tokens, M mel bins.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from ltx_core.components.noisers import GaussianNoiser
from ltx_core.conditioning import VideoConditionByLatentIndex, VideoConditionByReferenceLatent
from ltx_core.tools import AudioLatentTools, VideoLatentTools
from ltx_core.types import LatentState, VideoPixelShape

from ltxdist._ltx_core import AudioLatentShape, AudioPatchifier, VideoLatentPatchifier, VideoLatentShape
from ltxdist.strategies.audio_ref_only_ic import id_lora_masks
from ltxdist.strategies.streams import clean_reference_audio

LATENT_CHANNELS = 128


@dataclass(frozen=True)
class VideoSpec:
    width: int
    height: int
    num_frames: int
    fps: float = 24.0

    def check(self) -> None:
        if self.width % 32 or self.height % 32 or self.width <= 0 or self.height <= 0:
            raise ValueError(
                f"--width/--height must be positive multiples of 32, got {self.width}x{self.height}"
            )
        if self.num_frames < 1 or (self.num_frames - 1) % 8:
            raise ValueError(f"--frames must be 8n+1 (9, 17, 25, ..., 121), got {self.num_frames}")
        if self.fps <= 0:
            raise ValueError(f"--fps must be > 0, got {self.fps}")

    @property
    def pixel_shape(self) -> VideoPixelShape:
        return VideoPixelShape(
            batch=1, frames=self.num_frames, height=self.height, width=self.width, fps=self.fps
        )

    @property
    def seconds(self) -> float:
        return self.num_frames / self.fps


@dataclass(frozen=True)
class IdReferenceOptions:
    """How an ID-LoRA was trained (its file's metadata says; see `lora_extra_metadata`)."""

    negative_positions: bool = True
    mask_video_to_ref_audio: bool = False
    mask_ref_audio_to_text: bool = False


@dataclass
class ConditioningLatents:
    """Encoded references of one sample (VAE latents, no batch dim)."""

    first_frame_CFHW: torch.Tensor | None = None  # (128, 1, H, W): the first frame is kept clean
    reference_video_CFHW: torch.Tensor | None = None  # IC-LoRA reference, H and W / downscale factor
    reference_downscale_factor: int = 1
    reference_audio_CTM: torch.Tensor | None = None  # ID-LoRA reference voice (8, T_ref, 16)
    id_options: IdReferenceOptions = field(default_factory=IdReferenceOptions)


@dataclass
class InitialStates:
    video: LatentState
    video_tools: VideoLatentTools
    audio: LatentState | None
    audio_shape: AudioLatentShape | None
    audio_ref_tokens: int  # prepended clean reference tokens, dropped after sampling
    key_keep: dict[str, torch.Tensor]  # attention masks, see strategies/attention_masks.py
    query_keep: dict[str, torch.Tensor]


def _video_items(
    spec: VideoSpec, cond: ConditioningLatents, device: torch.device, dtype: torch.dtype
) -> list:
    items: list = []
    if cond.first_frame_CFHW is not None:
        items.append(VideoConditionByLatentIndex(cond.first_frame_CFHW[None].to(device, dtype), 1.0, 0))
    if cond.reference_video_CFHW is not None:
        ref = cond.reference_video_CFHW
        f = cond.reference_downscale_factor
        target = VideoLatentShape.from_pixel_shape(spec.pixel_shape, LATENT_CHANNELS)
        if (ref.shape[2] * f, ref.shape[3] * f) != (target.height, target.width):
            raise ValueError(
                f"reference video latent grid {ref.shape[2]}x{ref.shape[3]} times --reference-downscale {f} "
                f"is not the output grid {target.height}x{target.width}"
            )
        items.append(VideoConditionByReferenceLatent(ref[None].to(device, dtype), downscale_factor=f))
    return items


def _prepend_reference_audio(
    state: LatentState, ref_CTM: torch.Tensor, negative_positions: bool, device: torch.device
) -> LatentState:
    # The training strategy's own function: identical tokens and (negative) positions.
    ref = clean_reference_audio(
        {"reference_audio_latents": ref_CTM[None].float()},
        negative_positions=negative_positions,
        device=device,
    )
    tokens = ref.latent_BTC.to(state.latent.dtype)
    t_ref = tokens.shape[1]
    clean_mask = torch.zeros(1, t_ref, 1, device=device, dtype=state.denoise_mask.dtype)
    return LatentState(
        latent=torch.cat([tokens, state.latent], dim=1),
        denoise_mask=torch.cat([clean_mask, state.denoise_mask], dim=1),
        positions=torch.cat([ref.positions.to(state.positions.dtype), state.positions], dim=2),
        clean_latent=torch.cat([tokens, state.clean_latent], dim=1),
    )


def initial_states(
    spec: VideoSpec,
    cond: ConditioningLatents,
    *,
    with_audio: bool,
    generator: torch.Generator,
    device: torch.device,
    dtype: torch.dtype,
) -> InitialStates:
    """Conditioned, noised video (and audio) states. Noise is drawn video first, then audio, from one
    generator (as ltx-pipelines does), so a seed fixes the whole sample."""
    spec.check()
    noiser = GaussianNoiser(generator)
    video_shape = VideoLatentShape.from_pixel_shape(spec.pixel_shape, LATENT_CHANNELS)
    tools = VideoLatentTools(VideoLatentPatchifier(patch_size=1), video_shape, spec.fps)
    video = tools.create_initial_state(device, dtype)
    for item in _video_items(spec, cond, device, dtype):
        video = item.apply_to(video, tools)
    video = noiser(video)

    audio = audio_shape = None
    t_ref = 0
    key_keep: dict[str, torch.Tensor] = {}
    query_keep: dict[str, torch.Tensor] = {}
    if with_audio:
        audio_shape = AudioLatentShape.from_video_pixel_shape(spec.pixel_shape)
        audio = AudioLatentTools(AudioPatchifier(patch_size=1), audio_shape).create_initial_state(
            device, dtype
        )
        if cond.reference_audio_CTM is not None:
            audio = _prepend_reference_audio(
                audio, cond.reference_audio_CTM, cond.id_options.negative_positions, device
            )
            t_ref = int(cond.reference_audio_CTM.shape[1])
            opts = cond.id_options
            key_keep, query_keep = id_lora_masks(
                torch.ones(1, audio.latent.shape[1], dtype=torch.bool, device=device),
                t_ref,
                padded=False,
                mask_video_to_ref_audio=opts.mask_video_to_ref_audio,
                mask_ref_audio_to_text=opts.mask_ref_audio_to_text,
            )
        audio = noiser(audio)
    elif cond.reference_audio_CTM is not None:
        raise ValueError("--reference-audio conditions the audio stream; it cannot be used with --no-audio")
    return InitialStates(video, tools, audio, audio_shape, t_ref, key_keep, query_keep)


def final_latents(states: InitialStates) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Target latents without conditioning tokens: video (1, 128, F, H, W), audio (1, 8, T, 16) or None."""
    tools = states.video_tools
    video = tools.unpatchify(tools.clear_conditioning(states.video)).latent
    audio = None
    if states.audio is not None:
        assert states.audio_shape is not None
        tokens = states.audio.latent[:, states.audio_ref_tokens :]
        audio = AudioPatchifier(patch_size=1).unpatchify(tokens, output_shape=states.audio_shape)
    return video, audio
