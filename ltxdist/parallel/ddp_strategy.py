"""Lightning's DDP strategy with the run's layout mesh and collective timeouts that name
`parallel.collective_timeout_s`."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies import DDPStrategy

from ltxdist.parallel.dims import ParallelDims
from ltxdist.parallel.layout_strategy import LayoutMeshMixin
from ltxdist.parallel.timeouts import CollectiveTimeoutHint


class LtxDDPStrategy(LayoutMeshMixin, CollectiveTimeoutHint, DDPStrategy):
    """DDP over every process (gradients all-reduced in backward); see parallel/timeouts.py."""

    def __init__(self, *, dims: ParallelDims, **kwargs: Any):
        super().__init__(**kwargs)
        self.parallel_dims = dims

    def setup_environment(self) -> None:
        super().setup_environment()  # initialises the process group
        self.build_parallel_mesh()
