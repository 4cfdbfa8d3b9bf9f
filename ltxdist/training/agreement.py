"""One question every rank answers together: did anything fail anywhere? A rank that fails alone and
raises leaves the others waiting at their next collective until `parallel.collective_timeout_s` (30 min
by default), which then names the timeout instead of the cause; after this all-reduce every rank raises."""

from __future__ import annotations

from typing import Any

import torch


def any_rank(trainer: Any, flag: bool) -> bool:
    """True on every rank when `flag` is true on any (one all-reduce; the flag itself on one process)."""
    if trainer.world_size <= 1 or not (
        torch.distributed.is_available() and torch.distributed.is_initialized()
    ):
        return flag
    value = torch.tensor([int(flag)], device=trainer.strategy.root_device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())
