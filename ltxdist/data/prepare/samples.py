"""One manifest row -> one cached sample: decode, bucket, resize + crop, encode.

A problem with one clip raises `ClipError` naming the row and the file; the pipeline skips and reports
it (or stops under --strict). Legend: F frames, H height, W width; primes are latent sizes.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ltxdist.data.buckets import Bucket, choose_bucket
from ltxdist.data.manifest import REFERENCE_COLUMNS, ManifestRow, printable
from ltxdist.data.media import MediaError, NoAudioError, open_video, read_audio, read_frames, read_image
from ltxdist.data.prepare.options import AUDIO_MODES, SHORT_AUDIO_MODES, STRATEGIES
from ltxdist.data.sample import CachedSample
from ltxdist.encoders import EncoderSet, TextEncoding

log = logging.getLogger(__name__)

CACHE_DTYPE = torch.bfloat16  # what the transformer computes in; halves the cache
# IC-LoRA reference sheets (model card): the looped still must cover the output length, at least 121
# frames, and captions come in two parts. Warnings, not errors: short buckets are fine for small tests.
SHEET_MIN_FRAMES = 121
_SHEET_CAPTION = re.compile(r"\s*Reference sheet:\s*\S.*/\s*Generated video:\s*\S", re.S)


def reference_sheet_problems(caption: str, frames: int) -> dict[str, str]:
    """What is wrong with a reference-sheet row (a `reference_image` looped for video_to_video), by
    kind: "frames" (the same for every row of a bucket), "caption"."""
    problems = {}
    if frames < SHEET_MIN_FRAMES:
        problems["frames"] = (
            f"the sheet is looped to {frames} frames; the IC reference-sheet recipe needs >= "
            f"{SHEET_MIN_FRAMES} frames at full scale (the reference must cover the output length): "
            "use a bucket like 768x448x121"
        )
    if not _SHEET_CAPTION.match(caption):
        problems["caption"] = (
            f"caption {caption[:60]!r} is not the two-part reference-sheet prompt "
            "'Reference sheet: <what the sheet shows> / Generated video: <what happens>'"
        )
    return problems


class ClipError(ValueError):
    """One row cannot become a sample; the message names the row and the file."""


@dataclass(frozen=True)
class SampleSpec:
    buckets: tuple[Bucket, ...]
    strategy: str = "standard"
    reference_downscale_factor: int = 1
    audio: str = "required"
    reference_audio_seconds: float = 5.0
    lora_trigger: str | None = None
    short_audio: str = "mask"

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"--strategy {self.strategy!r}: choose one of {', '.join(STRATEGIES)}")
        if self.audio not in AUDIO_MODES:
            raise ValueError(f"--audio {self.audio!r}: choose one of {', '.join(AUDIO_MODES)}")
        if self.strategy == "audio_ref_only_ic" and self.audio == "off":
            raise ValueError(
                "--strategy audio_ref_only_ic trains the audio stream: it needs --audio required"
            )
        if self.short_audio not in SHORT_AUDIO_MODES:
            raise ValueError(
                f"--short-audio {self.short_audio!r}: choose one of {', '.join(SHORT_AUDIO_MODES)}"
            )
        if self.reference_audio_seconds <= 0:
            raise ValueError(f"--reference-audio-seconds must be > 0, got {self.reference_audio_seconds}")
        if self.lora_trigger is not None and printable(self.lora_trigger) != self.lora_trigger:
            # Bytes that are not UTF-8 on the command line arrive as surrogate escapes: every caption
            # would carry them into the tokenizer, which refuses them.
            raise ValueError(f"--lora-trigger '{printable(self.lora_trigger)}' is not UTF-8 text")


def _is_word_char(char: str) -> bool:
    return char.isalnum() or char == "_"


def with_trigger(caption: str, trigger: str | None) -> str:
    """`trigger` prepended to `caption`, unless the caption already starts with it as a whole word
    ("sks dog", "sks, a dog", "sks: a dog" keep theirs; "sksdog" does not start with the word "sks")."""
    if not trigger or not caption.startswith(trigger):
        return f"{trigger} {caption}" if trigger else caption
    after = caption[len(trigger) : len(trigger) + 1]
    continues_the_word = bool(after) and _is_word_char(trigger[-1]) and _is_word_char(after)
    return f"{trigger} {caption}" if continues_the_word else caption


class SampleBuilder:
    def __init__(self, spec: SampleSpec, encoders: EncoderSet):
        self.spec, self.enc = spec, encoders
        self._text_cache: dict[str, TextEncoding] = {}
        self._warned: set[str] = set()
        self._min_frames = min(b.frames for b in spec.buckets)

    # -- pieces ------------------------------------------------------------------------------------
    def _require_file(self, row: ManifestRow, column: str, path: Path | None) -> Path:
        if path is None:
            raise ClipError(f"{row.where}: column '{column}' is required by --strategy {self.spec.strategy}")
        if not path.is_file():
            raise ClipError(f"{row.where}: {column} file not found: {path}")
        return path

    def _frames(self, row: ManifestRow, path: Path) -> tuple[torch.Tensor, Bucket, float]:
        # One open file and one decoding for the size (its display rotation comes from the first
        # decoded frame) and the frames.
        with open_video(path) as video:
            info = video.info()
            # The container's frame count is a hint; decoding decides. A clip that turns out shorter
            # than its bucket moves to the longest bucket it does fill.
            bucket = choose_bucket(
                list(self.spec.buckets), info.width, info.height, max(info.num_frames, self._min_frames)
            )
            assert bucket is not None
            frames = video.read(bucket.frames, bucket.width, bucket.height)
        if frames.shape[0] < bucket.frames:
            shorter = choose_bucket(list(self.spec.buckets), info.width, info.height, frames.shape[0])
            if shorter is None:
                raise ClipError(
                    f"{row.where}: {path} has {frames.shape[0]} frames, shorter than every bucket (the "
                    f"shortest needs {self._min_frames}); add a shorter bucket to --buckets or drop the clip"
                )
            if (shorter.width, shorter.height) != (bucket.width, bucket.height):
                frames = read_frames(path, shorter.frames, shorter.width, shorter.height)
            bucket, frames = shorter, frames[: shorter.frames]
        return frames, bucket, info.fps

    def _text(self, caption: str) -> TextEncoding:
        if caption not in self._text_cache:
            if len(self._text_cache) > 4096:  # captions repeat within a dataset; keep memory bounded
                self._text_cache.clear()
            self._text_cache[caption] = self.enc.text.encode(caption)
        return self._text_cache[caption]

    def _audio_latents(self, path: Path, seconds: float, pad: bool = True) -> tuple[torch.Tensor, int, float]:
        """(latents (8, T, 16), latent frames holding sound, seconds of sound). With `pad`, T covers
        `seconds` even when the track ends earlier (the rest is encoded silence); without, the track's
        own length up to `seconds`."""
        audio = self.enc.audio
        wave = read_audio(path, audio.sample_rate, seconds, pad=False)
        sound_seconds = wave.shape[1] / audio.sample_rate
        if pad:
            wave = torch.nn.functional.pad(wave, (0, round(seconds * audio.sample_rate) - wave.shape[1]))
        frames = max(1, audio.latent_frames(wave.shape[1] / audio.sample_rate))
        # A latent frame that holds any sound counts as sound; only frames of pure padding do not.
        sound_frames = min(frames, max(1, math.ceil(sound_seconds * audio.latents_per_second - 1e-6)))
        return audio.encode(wave, frames), sound_frames, sound_seconds

    def _target_audio(self, row: ManifestRow, path: Path, seconds: float, meta: dict) -> torch.Tensor:
        latents, sound_frames, sound_seconds = self._audio_latents(path, seconds)
        frames = latents.shape[1]
        if sound_frames < frames:
            what = (
                f"{path}: its audio track holds {sound_seconds:.2f} s of sound, the clip lasts "
                f"{seconds:.2f} s: {frames - sound_frames} of its {frames} audio latent frames would be "
                "padding"
            )
            if self.spec.short_audio == "refuse":
                raise ClipError(f"{row.where}: {what} (--short-audio refuse; 'mask' keeps it)")
            log.warning("%s: %s, kept out of the loss (--short-audio mask)", row.where, what)
        meta["audio_frames"] = sound_frames  # read by collate: the rest is masked out of loss + attention
        return latents

    # -- the sample --------------------------------------------------------------------------------
    def build(self, row: ManifestRow) -> CachedSample:
        try:
            return self._build(row)
        except MediaError as exc:
            raise ClipError(f"{row.where}: {exc}") from exc

    def _build(self, row: ManifestRow) -> CachedSample:
        if row.problem:
            raise ClipError(row.problem)
        assert row.video is not None and row.caption is not None
        video_path = self._require_file(row, "video_path", row.video)
        frames, bucket, fps = self._frames(row, video_path)
        seconds = bucket.frames / fps
        caption = with_trigger(row.caption, self.spec.lora_trigger)
        text = self._text(caption)
        tensors = {
            "video_latents": self.enc.video.encode(frames),
            "video_context": text.video_context,
            "audio_context": text.audio_context,
            "context_mask": text.context_mask,
        }
        meta = {
            "id": row.sample_id,
            "bucket": bucket.name,
            "fps": fps,
            "caption": caption,
            "source": printable(str(video_path)),  # a non-UTF-8 name: \\xNN escapes
            "row": row.index,
            "num_frames": bucket.frames,
        }
        if self.spec.audio != "off":
            try:
                tensors["audio_latents"] = self._target_audio(row, video_path, seconds, meta)
            except NoAudioError as exc:
                if self.spec.audio == "required":
                    raise ClipError(
                        f"{row.where}: {video_path} has no audio track, but audio is required "
                        "(--audio required); use --audio optional to keep such clips without audio, "
                        "or --audio off"
                    ) from exc
        if self.spec.strategy == "video_to_video":
            if row.reference_video is None and row.reference_image is not None:
                self._warn_sheet(row, bucket)
            tensors["reference_video_latents"] = self._reference_video(row, bucket)
            meta["reference_downscale_factor"] = self.spec.reference_downscale_factor
        elif self.spec.strategy == "audio_ref_only_ic":
            ref = self._require_file(row, "reference_audio", row.reference_audio)
            try:
                # Not padded: a reference shorter than --reference-audio-seconds is its own length.
                ref_latents, ref_frames, _ = self._audio_latents(
                    ref, self.spec.reference_audio_seconds, pad=False
                )
            except NoAudioError as exc:
                raise ClipError(f"{row.where}: reference_audio {ref} has no audio track") from exc
            tensors["reference_audio_latents"] = ref_latents
            meta["reference_audio_frames"] = ref_frames
            if row.reference_image is not None:
                image = read_image(
                    self._require_file(row, "reference_image", row.reference_image),
                    bucket.width,
                    bucket.height,
                )
                tensors["reference_image_latents"] = self.enc.video.encode(image.unsqueeze(0))
        else:
            self._warn_unused_references(row)
        sample_tensors = {k: v.to(CACHE_DTYPE) if v.is_floating_point() else v for k, v in tensors.items()}
        return CachedSample(tensors=sample_tensors, meta=meta)

    def _reference_video(self, row: ManifestRow, bucket: Bucket) -> torch.Tensor:
        ref_bucket = bucket.downscaled(self.spec.reference_downscale_factor)
        if row.reference_video is not None:
            path = self._require_file(row, "reference_video", row.reference_video)
            frames = read_frames(path, ref_bucket.frames, ref_bucket.width, ref_bucket.height)
            if frames.shape[0] < ref_bucket.frames:
                # The reference must cover the whole target: a short one would silently misalign in time.
                raise ClipError(
                    f"{row.where}: reference_video {path} has {frames.shape[0]} frames, fewer than "
                    f"the {ref_bucket.frames} of bucket {bucket.name}"
                )
        elif row.reference_image is not None:
            path = self._require_file(row, "reference_image", row.reference_image)
            still = read_image(path, ref_bucket.width, ref_bucket.height)
            # A reference still (e.g. a character sheet) is looped into a static video of the target length.
            frames = still.unsqueeze(0).expand(ref_bucket.frames, -1, -1, -1).contiguous()
        else:
            raise ClipError(
                f"{row.where}: --strategy video_to_video needs a 'reference_video' (or a "
                "'reference_image' to loop) for every row"
            )
        return self.enc.video.encode(frames)

    def _warn_sheet(self, row: ManifestRow, bucket: Bucket) -> None:
        assert row.caption is not None
        frames = bucket.downscaled(self.spec.reference_downscale_factor).frames
        for kind, problem in reference_sheet_problems(row.caption, frames).items():
            if kind == "frames":  # the same for every row of the bucket: once
                if bucket.name in self._warned:
                    continue
                self._warned.add(bucket.name)
            log.warning("%s: reference_image: %s", row.where, problem)

    def _warn_unused_references(self, row: ManifestRow) -> None:
        for column in REFERENCE_COLUMNS:
            if getattr(row, column) is not None and column not in self._warned:
                self._warned.add(column)
                log.warning(
                    "column '%s' is ignored by --strategy standard (first seen at %s)", column, row.where
                )
