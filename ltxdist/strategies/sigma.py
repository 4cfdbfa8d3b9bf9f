"""Training sigma: shifted logit-normal, stretched, with a uniform share.

mu grows linearly with the number of generated tokens (0.95 at 1024, 2.05 at 4096, extrapolated), so
longer / larger clips train at higher noise, as for LTX-2.3 pre-training. Values below `floor` (1e-3) are
reflected around it, as ltx-trainer's and ID-LoRA's sampler do, so no sigma is ever below 1e-3: the
model multiplies sigma by 1000, and near-zero noise levels teach nothing but cost a step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Standard-normal quantiles of the 0.5th and 99.9th percentiles: the stretch maps them to 0 and 1.
_Z_LO = -2.5758293035489004
_Z_HI = 3.090232306167813


@dataclass(frozen=True)
class SigmaSampler:
    mu_at_1024: float = 0.95
    mu_at_4096: float = 2.05
    std: float = 1.0
    uniform_p: float = 0.1
    floor: float = 1e-3  # smallest sigma: the stretched tail is reflected here; the uniform share starts here

    def mu(self, num_tokens: int) -> float:
        slope = (self.mu_at_4096 - self.mu_at_1024) / (4096 - 1024)
        return self.mu_at_1024 + slope * (num_tokens - 1024)

    def sample_one(self, num_tokens: int, generator: torch.Generator) -> float:
        """One sigma in [0, 1] for a sample with `num_tokens` generated tokens (CPU draws only)."""
        mu = self.mu(num_tokens)
        z = float(torch.randn((), generator=generator, dtype=torch.float64)) * self.std + mu
        lo = _sigmoid(mu + self.std * _Z_LO)
        hi = _sigmoid(mu + self.std * _Z_HI)
        stretched = (_sigmoid(z) - lo) / (hi - lo)
        # Reflect the small tail around the floor (never below it), cap the top.
        sigma = min(stretched if stretched >= self.floor else 2 * self.floor - stretched, 1.0)
        uniform = self.floor + (1.0 - self.floor) * float(torch.rand((), generator=generator))
        use_uniform = float(torch.rand((), generator=generator)) < self.uniform_p
        return uniform if use_uniform else sigma

    def sample(self, num_tokens: int, generators: list[torch.Generator]) -> torch.Tensor:
        """(B,) float32 sigmas, sample b drawn from generators[b]."""
        return torch.tensor([self.sample_one(num_tokens, g) for g in generators], dtype=torch.float32)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))
