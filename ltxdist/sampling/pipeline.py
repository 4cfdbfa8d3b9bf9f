"""One sample: prompt (+ references) -> latents -> video frames + audio waveform -> mp4.

`Sampler` holds the transformer (fused or with live adapters), the VAEs and the text encoder. Text
contexts and reference latents are computed once per distinct prompt / reference set, and the text and
VAE encoders can then be released before denoising (the CLI, the grid and training validation do).
Batch size is 1: ltx-core's text connectors work per prompt.
Legend: F frames, H height, W width, C channels, N audio samples, S text tokens.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ltxdist.data.media import read_audio, read_conditioning_image, read_frames, write_video
from ltxdist.encoders import AudioVAE, TextEncoder, VideoVAE
from ltxdist.sampling.conditioning import (
    ConditioningLatents,
    IdReferenceOptions,
    VideoSpec,
    final_latents,
    initial_states,
)
from ltxdist.sampling.defaults import DEFAULT_NEGATIVE_PROMPT, IMAGE_CONDITIONING_CRF
from ltxdist.sampling.denoise import euler_sample
from ltxdist.sampling.guidance import Guidance, TextContext, X0Predictor
from ltxdist.sampling.schedule import sigma_schedule
from ltxdist.strategies.attention_masks import set_attention_masks


@dataclass(frozen=True)
class References:
    video: Path | None = None  # IC-LoRA reference video (or a still, looped)
    downscale_factor: int = 1  # output H/W over reference H/W (the LoRA's metadata says)
    image: Path | None = None  # kept as the clean first frame (ID-LoRA reference image, image-to-video)
    image_crf: int = IMAGE_CONDITIONING_CRF  # the image re-compressed by H.264 at this CRF first; 0: not
    audio: Path | None = None  # ID-LoRA reference voice
    audio_seconds: float = 5.0  # at most this much of the reference voice (as in preprocessing)


@dataclass(frozen=True)
class SampleRequest:
    prompt: str
    video: VideoSpec
    seed: int = 0
    steps: int = 30
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    guidance: Guidance = field(default_factory=Guidance)
    with_audio: bool = True
    references: References = field(default_factory=References)
    id_options: IdReferenceOptions = field(default_factory=IdReferenceOptions)
    shift_tokens: int | None = None  # sigma-shift token count; None: ltx-pipelines' 4096 anchor


# What `encode_references` reads: the reference files and settings, the output size (the image and the
# reference video are resized to it) and the ID options it stores. Not the prompt, seed, steps or guidance.
ReferenceKey = tuple[References, int, int, int, IdReferenceOptions]


def reference_key(request: SampleRequest) -> ReferenceKey:
    """Requests with equal keys get equal reference latents: the VAE encoders are deterministic (they
    return the latent means; no noise is drawn, so the seed plays no part) and the LoRA adapters live in
    the transformer only, so a strength changes nothing here. A file rewritten while one Sampler runs
    is not re-read."""
    spec = request.video
    return (request.references, spec.width, spec.height, spec.num_frames, request.id_options)


@dataclass
class SampleResult:
    frames_FHWC: torch.Tensor  # uint8
    audio: tuple[torch.Tensor, int] | None  # (waveform (C, N) float in [-1, 1], sample rate)
    video_latent: torch.Tensor  # (1, 128, F', H', W')
    audio_latent: torch.Tensor | None  # (1, 8, T, 16)


class Sampler:
    def __init__(
        self,
        transformer: torch.nn.Module,
        *,
        video_vae: VideoVAE,
        audio_vae: AudioVAE | None,
        text: TextEncoder | None,
        device: torch.device,
        dtype: torch.dtype,
    ):
        self.transformer = transformer
        self.predict = X0Predictor(transformer)
        self.video_vae, self.audio_vae, self.text = video_vae, audio_vae, text
        self.device, self.dtype = device, dtype
        self._text_cache: dict[str, TextContext] = {}
        self._reference_cache: dict[ReferenceKey, ConditioningLatents] = {}
        self._encoders_released = False  # release_reference_encoders() was called: keep them freed

    @property
    def num_blocks(self) -> int:
        return len(self.transformer.transformer_blocks)

    # -- text ---------------------------------------------------------------------------------------
    def text_context(self, prompt: str) -> TextContext:
        if prompt not in self._text_cache:
            if self.text is None:
                raise RuntimeError(f"prompt {prompt!r} was not encoded before the text encoder was released")
            enc = self.text.encode(prompt)
            mask = (
                None if bool(enc.context_mask.all()) else enc.context_mask[None].to(self.device, torch.long)
            )
            self._text_cache[prompt] = TextContext(
                video_BSC=enc.video_context[None].to(self.device, self.dtype),
                audio_BSC=enc.audio_context[None].to(self.device, self.dtype),
                mask_BS=mask,
            )
        return self._text_cache[prompt]

    def encode_prompts(self, prompts: Iterable[str], *, release: bool = False) -> None:
        """Encode every prompt now; with `release`, then free the text encoder before sampling."""
        for prompt in prompts:
            self.text_context(prompt)
        if release:
            self.release_text_encoder()

    def release_text_encoder(self) -> None:
        """Drop the text encoder (Gemma 3 12B on the real model); cached contexts stay usable."""
        self.text = None
        self._return_freed_memory()

    def release_reference_encoders(self) -> None:
        """Drop the VAE encoders once the references are encoded (`encode_references` builds them again
        if called later); the decoders stay. Validation keeps its Sampler for the whole run: without
        this the encoders would hold device memory through every training step."""
        self.video_vae.release_encoder()
        if self.audio_vae is not None:
            self.audio_vae.release_encoder()
        self._encoders_released = True
        self._return_freed_memory()

    def _return_freed_memory(self) -> None:
        # Freed tensors stay in PyTorch's caching allocator; return them to the driver.
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- references ---------------------------------------------------------------------------------
    def reference_latents(self, request: SampleRequest) -> ConditioningLatents:
        """`encode_references`, once per distinct reference set (see `reference_key`); later requests with
        the same set (another prompt, seed or LoRA strength) share the latents."""
        key = reference_key(request)
        if key not in self._reference_cache:
            self._reference_cache[key] = self.encode_references(request)
            if self._encoders_released:  # a set first seen after the release: free them again
                self.release_reference_encoders()
        return self._reference_cache[key]

    def encode_reference_sets(self, requests: Iterable[SampleRequest], *, release: bool = False) -> None:
        """Encode every request's references now; with `release`, then free the VAE encoders before
        sampling (the decoders stay)."""
        for request in requests:
            self.reference_latents(request)
        if release:
            self.release_reference_encoders()

    def encode_references(self, request: SampleRequest) -> ConditioningLatents:
        refs, spec = request.references, request.video
        spec.check()
        cond = ConditioningLatents(
            reference_downscale_factor=refs.downscale_factor, id_options=request.id_options
        )
        if refs.image is not None:
            image = read_conditioning_image(refs.image, spec.width, spec.height, refs.image_crf)
            cond.first_frame_CFHW = self.video_vae.encode(image[None])
        if refs.video is not None:
            cond.reference_video_CFHW = self._reference_video(refs.video, spec, refs.downscale_factor)
        if refs.audio is not None:
            if self.audio_vae is None:
                raise ValueError(
                    "--reference-audio needs the audio VAE (a checkpoint with audio_vae weights)"
                )
            sr = self.audio_vae.sample_rate
            wave = read_audio(refs.audio, sr, refs.audio_seconds, pad=False)
            frames = max(1, self.audio_vae.latent_frames(wave.shape[1] / sr))
            cond.reference_audio_CTM = self.audio_vae.encode(wave, frames)
        return cond

    def _reference_video(self, path: Path, spec: VideoSpec, factor: int) -> torch.Tensor:
        if factor < 1 or spec.width % (32 * factor) or spec.height % (32 * factor):
            raise ValueError(
                f"--reference-downscale {factor}: {spec.width}x{spec.height} / {factor} must be a multiple "
                "of 32 in both dimensions"
            )
        frames = read_frames(path, spec.num_frames, spec.width // factor, spec.height // factor)
        if frames.shape[0] == 1:  # a still (e.g. a reference sheet): looped, as in preprocessing
            frames = frames.expand(spec.num_frames, -1, -1, -1).contiguous()
        elif frames.shape[0] < spec.num_frames:
            raise ValueError(
                f"--reference-video {path} has {frames.shape[0]} frames; the reference must cover the "
                f"{spec.num_frames} output frames"
            )
        return self.video_vae.encode(frames)

    # -- sampling -----------------------------------------------------------------------------------
    @torch.no_grad()
    def denoise(
        self, request: SampleRequest, cond: ConditioningLatents, *, progress: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        g = request.guidance
        g.video.check(self.num_blocks, "--stg-blocks (video)")
        g.audio.check(self.num_blocks, "--stg-blocks (audio)")
        prompt = self.text_context(request.prompt)
        needs_negative = g.video.cfg_scale != 1 or (request.with_audio and g.audio.cfg_scale != 1)
        negative = self.text_context(request.negative_prompt) if needs_negative else None
        generator = torch.Generator(self.device).manual_seed(request.seed)
        states = initial_states(
            request.video,
            cond,
            with_audio=request.with_audio,
            generator=generator,
            device=self.device,
            dtype=self.dtype,
        )
        sigmas = sigma_schedule(request.steps, num_tokens=request.shift_tokens)
        # The masks the LoRA was trained with (ID-LoRA); none otherwise. Cleared again afterwards.
        set_attention_masks(self.transformer, states.key_keep, states.query_keep)
        try:
            states = euler_sample(
                self.predict,
                states,
                sigmas,
                prompt=prompt,
                negative=negative,
                guidance=g,
                progress=progress,
                desc=f"seed {request.seed}",
            )
        finally:
            set_attention_masks(self.transformer)
        return final_latents(states)

    def decode(
        self, video_latent: torch.Tensor, audio_latent: torch.Tensor | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, int] | None]:
        frames = self.video_vae.decode(video_latent[0].to(self.dtype))
        audio = None
        if audio_latent is not None:
            if self.audio_vae is None:
                raise ValueError("decoding audio needs the audio VAE and vocoder")
            audio = self.audio_vae.decode(audio_latent[0].to(self.dtype))
        return frames, audio

    def generate(self, request: SampleRequest, *, progress: bool = True) -> SampleResult:
        cond = self.reference_latents(request)
        video_latent, audio_latent = self.denoise(request, cond, progress=progress)
        frames, audio = self.decode(video_latent, audio_latent)
        return SampleResult(frames, audio, video_latent, audio_latent)


def write_sample(path: str | Path, result: SampleResult, fps: float) -> Path:
    """H.264 (+ AAC) mp4, written atomically by PyAV."""
    return write_video(path, result.frames_FHWC, fps, audio=result.audio)
