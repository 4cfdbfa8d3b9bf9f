"""Training strategies: a batch of cached latents -> Modality inputs, velocity targets, loss masks."""

from __future__ import annotations

from typing import Any

from ltxdist.strategies.base import StrategyOutput, StreamTargets, TrainingStrategy
from ltxdist.strategies.sigma import SigmaSampler
from ltxdist.strategies.standard import StandardStrategy


def build_strategy(cfg: Any) -> TrainingStrategy:
    """From the `strategy` config group."""
    sampler = SigmaSampler(
        mu_at_1024=cfg.sigma_mu_at_1024,
        mu_at_4096=cfg.sigma_mu_at_4096,
        std=cfg.sigma_std,
        uniform_p=cfg.sigma_uniform_p,
    )
    if cfg.name == "standard":
        return StandardStrategy(
            sigma_sampler=sampler,
            first_frame_conditioning_p=cfg.first_frame_conditioning_p,
            with_audio=cfg.with_audio,
            audio_sigma=cfg.audio_sigma,
        )
    raise ValueError(f"strategy={cfg.name!r} is not implemented (available: standard)")


__all__ = [
    "SigmaSampler",
    "StandardStrategy",
    "StrategyOutput",
    "StreamTargets",
    "TrainingStrategy",
    "build_strategy",
]
