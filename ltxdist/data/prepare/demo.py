"""Synthetic raw clips for the demo and tests: coloured squares moving over a dark background, each
with a stereo tone, in a few sizes, lengths and frame rates, with `.txt` caption sidecars.

Each clip shows one of a few "concepts" (colour + direction + pitch) named in its caption, so a LoRA
trained on them has something to learn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ltxdist.data.media import write_video

AUDIO_RATE = 44100  # deliberately not the VAE's 16 kHz: preparation must resample


@dataclass(frozen=True)
class Concept:
    name: str
    rgb: tuple[int, int, int]
    direction: tuple[int, int]
    tone_hz: float


CONCEPTS = (
    Concept("red square moving right with a low tone", (230, 40, 40), (1, 0), 220.0),
    Concept("green square moving down with a middle tone", (40, 220, 60), (0, 1), 440.0),
    Concept("blue square moving left with a high tone", (50, 80, 240), (-1, 0), 880.0),
    Concept("yellow square moving up with a buzzing tone", (240, 220, 40), (0, -1), 330.0),
)
# (width, height, frames, fps): several aspect ratios and lengths; all >= 17 frames.
DEMO_SHAPES = ((96, 64, 25, 24.0), (64, 64, 20, 24.0), (128, 72, 33, 25.0), (64, 96, 18, 24.0))


def render_clip(concept: Concept, width: int, height: int, num_frames: int, seed: int) -> torch.Tensor:
    """uint8 (F, H, W, 3) frames of the concept's square crossing the frame."""
    gen = torch.Generator().manual_seed(seed)
    side = max(8, min(width, height) // 3)
    frames = torch.full((num_frames, height, width, 3), 24, dtype=torch.uint8)
    frames += torch.randint(0, 12, frames.shape, generator=gen, dtype=torch.uint8)
    dx, dy = concept.direction
    for i in range(num_frames):
        t = i / max(1, num_frames - 1)
        cx = width / 2 + dx * (t - 0.5) * (width - side)
        cy = height / 2 + dy * (t - 0.5) * (height - side)
        x0, y0 = int(cx - side / 2), int(cy - side / 2)
        frames[i, max(0, y0) : y0 + side, max(0, x0) : x0 + side] = torch.tensor(
            concept.rgb, dtype=torch.uint8
        )
    return frames


def render_tone(concept: Concept, seconds: float, rate: int = AUDIO_RATE) -> torch.Tensor:
    t = torch.arange(round(seconds * rate)) / rate
    left = 0.3 * torch.sin(2 * math.pi * concept.tone_hz * t)
    right = 0.3 * torch.sin(2 * math.pi * concept.tone_hz * 1.5 * t)
    return torch.stack([left, right])


def make_clip(
    path: Path,
    concept: Concept,
    width: int,
    height: int,
    num_frames: int,
    fps: float,
    *,
    seed: int = 0,
    audio: bool = True,
    caption: str | None = None,
) -> Path:
    frames = render_clip(concept, width, height, num_frames, seed)
    sound = (render_tone(concept, num_frames / fps), AUDIO_RATE) if audio else None
    write_video(path, frames, fps, sound)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")
    return path


def make_demo_clips(out: str | Path, num_clips: int = 8, seed: int = 0) -> list[Path]:
    """`num_clips` raw mp4 clips with audio and caption sidecars in `out` (a folder for ltxdist-prepare)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(num_clips):
        concept = CONCEPTS[i % len(CONCEPTS)]
        width, height, frames, fps = DEMO_SHAPES[i % len(DEMO_SHAPES)]
        paths.append(
            make_clip(
                out / f"clip_{i:03d}.mp4",
                concept,
                width,
                height,
                frames,
                fps,
                seed=seed + i,
                caption=f"a {concept.name}",
            )
        )
    return paths
