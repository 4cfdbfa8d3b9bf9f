"""Lightning's ModelParallelStrategy (FSDP2 in `configure_model`) on the run's own device mesh.

Lightning builds a (data_parallel, tensor_parallel) mesh; ltxdist builds its layout's named mesh instead
(parallel/dims.py: replicate x shard x sequence), so `fully_shard` gets a 1-D mesh (FSDP2) or a 2-D one
(HSDP). Checkpoints do not go through the strategy: ltxdist.checkpoint writes them from the module and
optimizer under every parallel config.
"""

from __future__ import annotations

from datetime import timedelta

from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.strategies.parallel import ParallelStrategy

from ltxdist.parallel.dims import ParallelDims
from ltxdist.parallel.layout_strategy import LayoutMeshMixin
from ltxdist.parallel.timeouts import CollectiveTimeoutHint


class FSDP2Strategy(LayoutMeshMixin, CollectiveTimeoutHint, ModelParallelStrategy):
    def __init__(
        self,
        *,
        dims: ParallelDims,
        process_group_backend: str | None = None,
        timeout: timedelta | None = None,
    ):
        super().__init__(
            data_parallel_size=dims.world_size,
            tensor_parallel_size=1,
            process_group_backend=process_group_backend,
            **({"timeout": timeout} if timeout is not None else {}),  # else Lightning's default
        )
        self.parallel_dims = dims

    def setup_environment(self) -> None:
        if self.num_nodes * self.num_processes != self.parallel_dims.world_size:
            raise ValueError(
                f"parallel.devices x parallel.num_nodes = {self.parallel_dims.world_size}, but Lightning "
                "sees "
                f"{self.num_nodes} node(s) x {self.num_processes} process(es): set parallel.devices to the "
                "number of processes per node (torchrun --nproc_per_node)"
            )
        # ModelParallelStrategy.setup_environment without its (data_parallel, tensor_parallel) mesh.
        ParallelStrategy.setup_environment(self)
        self._setup_distributed()
        mesh = self.build_parallel_mesh()
        self._device_mesh = mesh.world
        assert self.lightning_module is not None
        self.lightning_module._device_mesh = mesh.world
