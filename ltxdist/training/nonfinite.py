"""Non-finite steps: skip the optimizer step whose loss or gradients hold NaN/Inf, count it, and stop
with a clear error after `trainer.max_consecutive_nonfinite` such steps in a row.

The check runs after backward and after data-parallel gradient reduction, before clipping and the
optimizer step (LTXLoRAModule.on_before_optimizer_step). Every rank must take the same decision, or the
ranks would disagree on the adapters (or one would stop while the others wait in a collective):

The decision reads the step's total gradient norm (`total_grad_norm`, also the logged `grad_norm`):
NaN/Inf in any gradient element makes it non-finite.
- single process / DDP: DDP all-reduces gradients during backward, so a NaN on any rank is a NaN in
  every rank's reduced gradients and so in every rank's norm, without further communication. A
  non-finite loss is first turned into NaN gradients (`poison_nonfinite_loss`), so a loss that is Inf
  while its gradients stay finite is caught the same way.
- FSDP2: each rank holds only a shard of the reduced gradients; the norm is summed over the ranks (one
  all-reduce of a scalar per optimizer step), so a NaN on the rank that owns the element reaches all.
- DeepSpeed ZeRO-2/3: gradients live in DeepSpeed's partitions, not in `param.grad`. DeepSpeed's own
  overflow check (all-reduced over the data-parallel group) already skips such a step; the guard counts
  it from `engine.skipped_steps` after the step.

A skipped step changes neither the adapters nor the AdamW moments (their gradients are dropped, and
AdamW skips parameters without one). It still consumes its batch (the data position advances) and its
optimizer-step slot: `global_step` and the learning-rate schedule advance as for any other step, so an
interrupted and resumed run lands on the same steps as an uninterrupted one. The counters are saved in
checkpoints, so `train/nonfinite_skipped` and the K-in-a-row limit carry across a resume.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import torch

log = logging.getLogger("ltxdist")
FLAG = "trainer.max_consecutive_nonfinite"


class NonFiniteTrainingError(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradients."""


def poison_nonfinite_loss(loss: torch.Tensor) -> torch.Tensor:
    """The loss, unchanged when finite; otherwise a loss whose gradients are all NaN. No host sync:
    multiplying by exactly 1.0 leaves a finite loss and its gradients bit-identical."""
    factor = torch.where(torch.isfinite(loss.detach()), 1.0, float("nan"))
    return loss * factor.to(loss.dtype)


def total_grad_norm(params: Iterable[torch.nn.Parameter]) -> torch.Tensor | None:
    """The 2-norm over every gradient of `params` (None without gradients), the same on every rank. One
    multi-tensor launch for all adapters; NaN/Inf in any element makes it non-finite, and so does a
    finite gradient whose norm overflows fp32 (>1e19), which is what it would make of the update."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return None
    norm = torch.nn.utils.get_total_norm(grads)
    # FSDP2 gradients are DTensor shards: their norm is a partial sum until reduced over the ranks.
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


class NonFiniteGuard:
    """Counts skipped steps and enforces the K-in-a-row limit; its state goes into checkpoints."""

    def __init__(self, max_consecutive: int):
        if max_consecutive < 1:
            raise ValueError(f"{FLAG} must be >= 1, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.total = 0  # steps skipped over the whole run
        self.consecutive = 0  # skipped steps in a row up to the last optimizer step
        self.last_skipped = False

    def decide(self, grad_norm: float | None) -> bool:
        """True when this optimizer step must be skipped: its `total_grad_norm` (read to the host in the
        step's one sync, tracking/metrics.py; identical on every rank, see module doc) is not finite."""
        return grad_norm is not None and not math.isfinite(grad_norm)

    def record(self, skipped: bool, *, step: int, detail: str = "") -> None:
        """Count this optimizer step; raise NonFiniteTrainingError at the K-th skipped step in a row.
        `step` is the 1-based number of the optimizer step being taken."""
        self.last_skipped = skipped
        if not skipped:
            self.consecutive = 0
            return
        self.total += 1
        self.consecutive += 1
        where = f" ({detail})" if detail else ""
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteTrainingError(
                f"{self.consecutive} optimizer steps in a row (steps {step - self.consecutive + 1}..{step}) "
                f"had a non-finite loss or gradients (NaN/Inf){where}; stopping. {self.total} step(s) were "
                "skipped in this run. Check the cached latents of these samples (a corrupt shard) or "
                f"lower optim.lr; {FLAG}={self.max_consecutive} sets how many such steps in a row are "
                "tolerated. The newest complete checkpoint is untouched."
            )
        log.warning(
            "step %d: non-finite loss or gradients%s; optimizer step skipped (%d in a row, %d in total; "
            "stopping at %s=%d)",
            step,
            where,
            self.consecutive,
            self.total,
            FLAG,
            self.max_consecutive,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"total": self.total, "consecutive": self.consecutive}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total = int(state.get("total", 0))
        self.consecutive = int(state.get("consecutive", 0))
