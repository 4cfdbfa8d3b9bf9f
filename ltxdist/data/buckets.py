"""Resolution buckets `WxHxF` and the choice of a bucket for a clip.

A clip goes to the bucket with the nearest aspect ratio, then the most frames, then the largest area,
among the buckets with no more frames than the clip has (a clip is never padded in time). Aspect
ratios are compared in log space so 2:1 and 1:2 are equally far from 1:1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ltxdist.data.synthetic import parse_bucket

_ASPECT_TOLERANCE = 1e-9


@dataclass(frozen=True, order=True)
class Bucket:
    width: int
    height: int
    frames: int

    @property
    def name(self) -> str:
        return f"{self.width}x{self.height}x{self.frames}"

    @property
    def aspect(self) -> float:
        return self.width / self.height

    def downscaled(self, factor: int) -> Bucket:
        """The reference bucket of an IC-LoRA sample: same frames, W and H divided by `factor`."""
        return Bucket(self.width // factor, self.height // factor, self.frames)


def parse_buckets(spec: str, flag: str = "--buckets") -> list[Bucket]:
    """'960x544x49;768x448x49' (';' or ',' separated) -> buckets; errors name the flag and the bucket."""
    names = [s.strip() for s in spec.replace(",", ";").split(";") if s.strip()]
    if not names:
        raise ValueError(f"{flag} is empty; give buckets like 960x544x49;768x448x49")
    buckets = []
    for name in names:
        try:
            buckets.append(Bucket(*parse_bucket(name)))
        except ValueError as exc:
            raise ValueError(f"{flag}: {exc}") from None
    if len(set(buckets)) != len(buckets):
        raise ValueError(f"{flag}: duplicate buckets in {spec!r}")
    return buckets


def check_reference_factor(buckets: list[Bucket], factor: int) -> None:
    if factor < 1:
        raise ValueError(f"--reference-downscale-factor must be >= 1, got {factor}")
    for b in buckets:
        if b.width % (32 * factor) or b.height % (32 * factor):
            raise ValueError(
                f"--reference-downscale-factor {factor}: bucket {b.name} would give a {b.width / factor:g}x"
                f"{b.height / factor:g} reference, which is not a multiple of 32; use a factor that divides "
                "W/32 and H/32 of every bucket"
            )


def choose_bucket(buckets: list[Bucket], width: int, height: int, num_frames: int) -> Bucket | None:
    """The bucket for a clip of `width` x `height` and `num_frames` frames, or None if it is too short."""
    fitting = [b for b in buckets if b.frames <= num_frames]
    if not fitting:
        return None
    clip_log_aspect = math.log(width / height)
    best_distance = min(abs(math.log(b.aspect) - clip_log_aspect) for b in fitting)
    nearest = [
        b for b in fitting if abs(math.log(b.aspect) - clip_log_aspect) - best_distance < _ASPECT_TOLERANCE
    ]
    return max(nearest, key=lambda b: (b.frames, b.width * b.height))
