"""Training strategies: a batch of cached latents -> Modality inputs, velocity targets, loss masks."""

from __future__ import annotations

from typing import Any

from ltxdist.strategies.audio_ref_only_ic import AudioRefOnlyICStrategy
from ltxdist.strategies.base import StrategyOutput, StreamTargets, TrainingStrategy
from ltxdist.strategies.sigma import SigmaSampler
from ltxdist.strategies.standard import StandardStrategy
from ltxdist.strategies.video_to_video import ReferenceMismatchError, VideoToVideoStrategy

STRATEGY_NAMES = ("standard", "video_to_video", "audio_ref_only_ic")


def build_strategy(cfg: Any) -> TrainingStrategy:
    """From the `strategy` config group."""
    sampler = SigmaSampler(
        mu_at_1024=cfg.sigma_mu_at_1024,
        mu_at_4096=cfg.sigma_mu_at_4096,
        std=cfg.sigma_std,
        uniform_p=cfg.sigma_uniform_p,
    )
    p = cfg.first_frame_conditioning_p
    if cfg.name == "standard":
        return StandardStrategy(sampler, p, cfg.with_audio, cfg.audio_sigma)
    if cfg.name == "video_to_video":
        return VideoToVideoStrategy(
            sampler, cfg.reference_downscale_factor, p, cfg.with_audio, cfg.audio_sigma
        )
    if cfg.name == "audio_ref_only_ic":
        return AudioRefOnlyICStrategy(
            sampler,
            p,
            cfg.use_negative_ref_positions,
            cfg.mask_video_to_ref_audio,
            cfg.mask_ref_audio_to_text,
        )
    raise ValueError(f"strategy={cfg.name!r} is not implemented (available: {', '.join(STRATEGY_NAMES)})")


__all__ = [
    "STRATEGY_NAMES",
    "AudioRefOnlyICStrategy",
    "ReferenceMismatchError",
    "SigmaSampler",
    "StandardStrategy",
    "StrategyOutput",
    "StreamTargets",
    "TrainingStrategy",
    "VideoToVideoStrategy",
    "build_strategy",
]
