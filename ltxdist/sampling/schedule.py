"""The LTX-2.3 sigma schedule, from ltx-core's own `LTX2Scheduler`.

ltx-pipelines calls `LTX2Scheduler().execute(steps=N)` without a latent, so the shift is computed for
its 4096-token anchor whatever the resolution (passing the real token count over-shifts long, large
videos). ltxdist does the same by default; `num_tokens` is there to study the alternative.
"""

from __future__ import annotations

import torch
from ltx_core.components.schedulers import MAX_SHIFT_ANCHOR, LTX2Scheduler

import ltxdist._ltx_core  # noqa: F401  (import order)


def sigma_schedule(steps: int, *, num_tokens: int | None = None) -> torch.Tensor:
    """`steps + 1` float32 sigmas from 1.0 down to 0.0 (shifted, stretched to a 0.1 terminal)."""
    if steps < 2:
        # With one step the stretch divides by zero inside LTX2Scheduler (all sigmas become NaN).
        raise ValueError(f"--steps must be >= 2, got {steps}")
    sigmas = LTX2Scheduler().execute(steps=steps, default_number_of_tokens=num_tokens or MAX_SHIFT_ANCHOR)
    return sigmas.to(torch.float32)
