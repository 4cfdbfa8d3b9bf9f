"""Lightning's DDP strategy whose collective timeouts name `parallel.collective_timeout_s`."""

from __future__ import annotations

from lightning.pytorch.strategies import DDPStrategy

from ltxdist.parallel.timeouts import CollectiveTimeoutHint


class LtxDDPStrategy(CollectiveTimeoutHint, DDPStrategy):
    """DDP over every process (gradients all-reduced in backward); see parallel/timeouts.py."""
