"""What every ltxdist Lightning strategy adds: the run's layout mesh, built once the process group
exists (the module and the DataModule take sharding, sequence-parallel and data ranks from it)."""

from __future__ import annotations

from ltxdist.parallel.dims import ParallelDims, ParallelMesh, mesh_device_type


class LayoutMeshMixin:
    """Mixin for a Lightning strategy; set `parallel_dims` in __init__."""

    parallel_dims: ParallelDims
    parallel_mesh: ParallelMesh | None = None

    def build_parallel_mesh(self) -> ParallelMesh:
        # Collective: every rank, right after the process group is initialised.
        self.parallel_mesh = self.parallel_dims.build_mesh(mesh_device_type(self.root_device))  # type: ignore[attr-defined]
        return self.parallel_mesh
