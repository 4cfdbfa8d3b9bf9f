"""Collective timeouts: a hung or dead rank becomes an error that names `parallel.collective_timeout_s`.

Every process group ltxdist's Lightning strategies create gets `parallel.collective_timeout_s`. When a
collective waits longer (a rank hangs in data loading, dies without its process group noticing, or
stops), the waiting ranks fail: gloo raises a RuntimeError from the collective ("Timed out waiting
...ms"), which reaches Lightning's exception handling, where `CollectiveTimeoutHint.on_exception` puts
an explanation naming the flag in front of its message. torchrun then stops the remaining workers.

With NCCL (GPUs) torch's watchdog aborts the process after the same timeout (TORCH_NCCL_ASYNC_ERROR_HANDLING,
default on) and logs "Watchdog caught collective operation timeout" itself; the exception may not reach
Python, so the hint is not added there, but the run still ends instead of hanging.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

FLAG = "parallel.collective_timeout_s"
# What torch's backends say when a collective (or the store behind it) runs out of time.
_TIMEOUT_PATTERNS = re.compile(
    r"timed out|timeout|watchdog caught collective operation|wait timeout|socket timeout", re.IGNORECASE
)


def collective_timeout(parallel_cfg: Any) -> timedelta:
    return timedelta(seconds=float(parallel_cfg.collective_timeout_s))


def is_collective_timeout(exception: BaseException) -> bool:
    """A torch.distributed error (DistBackendError / DistStoreError are RuntimeErrors) that says it ran
    out of time."""
    return isinstance(exception, RuntimeError) and bool(_TIMEOUT_PATTERNS.search(str(exception)))


def explain_collective_timeout(exception: BaseException, timeout: timedelta | None) -> bool:
    """Prefix the message of a collective timeout with what happened and the flag to change; True if
    it was one. The exception object is changed in place, so the error that ends the run says it."""
    if not is_collective_timeout(exception) or FLAG in str(exception):
        return False
    seconds = f"{timeout.total_seconds():g}" if timeout is not None else "?"
    hint = (
        f"a collective operation (gradient all-reduce, barrier or broadcast) waited longer than "
        f"{FLAG}={seconds} s for another rank: a rank hung, died or fell far behind (data loading, "
        f"checkpoint writing). Look at the other ranks' logs; if such waits are expected, raise {FLAG}. "
        "The newest complete checkpoint is untouched; run.resume=auto continues from it. Backend error: "
    )
    first = str(exception.args[0]) if exception.args else ""
    exception.args = (hint + first, *exception.args[1:])
    return True


class CollectiveTimeoutHint:
    """Mixin for a Lightning strategy with a `_timeout` (every distributed strategy has one)."""

    def on_exception(self, exception: BaseException) -> None:
        explain_collective_timeout(exception, getattr(self, "_timeout", None))
        super().on_exception(exception)  # type: ignore[misc]
