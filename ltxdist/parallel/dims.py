"""The parallel layout of a run: one validated object that every other part asks what the run does.

`ParallelDims` holds the sizes (data-parallel replicate x shard, sequence parallel) and the engine that
runs them (plain, DDP, FSDP2, DeepSpeed ZeRO). Code asks it for capabilities (`shards_with_fsdp`,
`uses_deepspeed`, `lockstep_forward`, ...) instead of comparing `parallel.name` strings.

`build_mesh` turns it into a named `DeviceMesh` once the process group exists:

    ranks = replicate x shard x sequence, sequence innermost (consecutive ranks share samples)

    fsdp mesh   ("dp_replicate", "dp_shard_sp"): FSDP2 shards over dp_shard_sp; with replicate > 1 the
                2-D mesh makes `fully_shard` HSDP (shard inside a replica, replicate across replicas)
    dp          dp_replicate x dp_shard flattened: which share of the data a rank reads
    sp          the sequence-parallel group (Ulysses all-to-alls)

With `replicate` = nodes and `shard` = GPUs per node (parallel=hsdp), the frozen base is all-gathered
over NVLink inside a node and only LoRA gradients cross the network (benchmarks/SCALING.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ltxdist.parallel.deepspeed_config import ZERO_STAGES

if TYPE_CHECKING:
    import torch
    from torch.distributed.device_mesh import DeviceMesh

# parallel.name -> the engine that runs it
ENGINES = {
    "single": "single",
    "ddp": "ddp",
    "fsdp2": "fsdp",
    "hsdp": "fsdp",
    "deepspeed_zero2": "deepspeed",
    "deepspeed_zero3": "deepspeed",
}


class LayoutError(ValueError):
    """The parallel sizes do not fit together; the message names the flag (a ConfigError subclass
    would import the config package from here, so config/schema.py re-raises it as one)."""


@dataclass(frozen=True)
class ParallelDims:
    name: str  # the parallel= choice, for messages
    engine: str  # single | ddp | fsdp | deepspeed
    world_size: int
    replicate: int  # data-parallel replicas (HSDP: one per node)
    shard: int  # processes a replica's data-parallel share is sharded over (FSDP / ZeRO)
    sequence: int  # processes that share each sample (Ulysses)
    zero_stage: int = 0  # DeepSpeed ZeRO stage, 0 when not DeepSpeed

    # -- construction --------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, p: Any) -> ParallelDims:
        """From the `parallel` config group; every inconsistency names the flag to change."""
        if p.name not in ENGINES:
            raise LayoutError(f"parallel: unknown parallel config {p.name!r} ({' | '.join(ENGINES)})")
        engine = ENGINES[p.name]
        world = int(p.devices) * int(p.num_nodes)
        sequence = int(p.sequence_parallel)
        # replicate / shard exist on the FSDP2 options only (the closed config has them nowhere else)
        replicate, shard = int(p.get("replicate", 1)), int(p.get("shard", -1))
        if world < 1:
            raise LayoutError("parallel.devices / parallel.num_nodes: must be >= 1")
        if sequence < 1 or world % sequence:
            raise LayoutError(
                f"parallel.sequence_parallel: must be >= 1 and divide the number of processes ({world} = "
                f"parallel.devices x parallel.num_nodes), got {sequence}"
            )
        groups = world // sequence  # data-parallel groups
        if engine != "fsdp" and (replicate != 1 or shard not in (-1, groups)):
            raise LayoutError(
                f"parallel.replicate / parallel.shard: only FSDP2 layouts split data parallelism into "
                f"replicas and shards (parallel=hsdp or parallel=fsdp2), not parallel={p.name}"
            )
        if engine == "fsdp":
            if replicate < 1 or groups % replicate:
                raise LayoutError(
                    f"parallel.replicate: must be >= 1 and divide the {groups} data-parallel processes "
                    f"({world} processes / parallel.sequence_parallel {sequence}), got {replicate}"
                )
            if shard == -1:
                shard = groups // replicate
            if shard < 1 or replicate * shard != groups:
                raise LayoutError(
                    "parallel.shard: parallel.replicate x parallel.shard x parallel.sequence_parallel must "
                    f"be the number of processes ({world}), got {replicate} x {shard} x {sequence}; leave "
                    "parallel.shard=-1 to use the rest"
                )
        elif engine == "ddp":
            replicate, shard = groups, 1  # every process holds everything
        elif engine == "deepspeed":
            # Data parallelism over every group; ZeRO itself (deepspeed.initialize without an mpu) takes the
            # whole world as its data-parallel group, sequence-parallel ranks included: it partitions over
            # all processes, and sequence_parallel.loss_scale undoes its extra average over them.
            replicate, shard = 1, groups
        else:
            if world != 1:
                raise LayoutError(
                    "parallel: parallel=single runs one process; use parallel=ddp for devices > 1 or "
                    "num_nodes > 1"
                )
            replicate = shard = 1
        return cls(
            name=p.name,
            engine=engine,
            world_size=world,
            replicate=replicate,
            shard=shard,
            sequence=sequence,
            zero_stage=ZERO_STAGES.get(p.name, 0),
        )

    # -- capabilities --------------------------------------------------------------------------------
    @property
    def distributed(self) -> bool:
        """Runs under a process group (FSDP2 also with one process: DTensors need a mesh)."""
        return self.engine != "single"

    @property
    def shards_with_fsdp(self) -> bool:
        return self.engine == "fsdp"

    @property
    def hsdp(self) -> bool:
        return self.engine == "fsdp" and self.replicate > 1

    @property
    def uses_deepspeed(self) -> bool:
        return self.engine == "deepspeed"

    @property
    def partitions_while_materializing(self) -> bool:
        """ZeRO-3 partitions each block right after loading it (parallel/materialize.py)."""
        return self.zero_stage == 3

    @property
    def lockstep_forward(self) -> bool:
        """Every forward all-gathers sharded weights: ranks must run the same number of forwards."""
        return self.engine == "fsdp" or self.zero_stage == 3

    @property
    def skips_nonfinite_steps_itself(self) -> bool:
        """DeepSpeed checks for overflow and skips such a step in its own engine."""
        return self.engine == "deepspeed"

    @property
    def supports_warm_start(self) -> bool:
        """Carrying adapters + AdamW moments into a new run (curriculum stages, lora.init_from)."""
        return self.engine != "deepspeed"

    @property
    def data_parallel_size(self) -> int:
        """Groups of processes that read different samples."""
        return self.replicate * self.shard

    def describe(self) -> str:
        """One line for logs and the dry run."""
        what = {
            "single": "one process",
            "ddp": "every process holds the whole frozen base; LoRA gradients all-reduced",
            "deepspeed": f"ZeRO-{self.zero_stage} over {self.shard * self.sequence} process(es)",
        }.get(self.engine)
        if what is None:
            if self.hsdp:
                what = (
                    f"HSDP: base + adapters sharded 1/{self.shard * self.sequence} inside each of "
                    f"{self.replicate} replicas; only gradients cross replicas"
                )
            else:
                what = f"FSDP2: base + adapters sharded 1/{self.shard * self.sequence} per process"
        return f"{self.name}: {what}"

    def as_record(self) -> dict[str, Any]:
        """JSON for checkpoints: the layout a checkpoint was written under. `shard` counts data-parallel
        groups (what the data position depends on); FSDP2 and ZeRO split the weights over
        `shard` x `sequence` processes."""
        return {
            "name": self.name,
            "engine": self.engine,
            "world_size": self.world_size,
            "replicate": self.replicate,
            "shard": self.shard,
            "sequence": self.sequence,
            "data_parallel_size": self.data_parallel_size,
        }

    # -- mesh ----------------------------------------------------------------------------------------
    def build_mesh(self, device_type: str) -> ParallelMesh:
        """Collective (every rank, after the process group exists): the named meshes of this layout."""
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh

        if not (dist.is_available() and dist.is_initialized()):
            if self.distributed:
                raise RuntimeError(f"parallel={self.name} needs a process group (torchrun / launch/train.sh)")
            return ParallelMesh(self, None, None, None)
        if dist.get_world_size() != self.world_size:
            raise LayoutError(
                f"parallel.devices x parallel.num_nodes = {self.world_size}, but {dist.get_world_size()} "
                "processes were started: set parallel.devices to the processes per node (torchrun "
                "--nproc_per_node)"
            )
        # The root mesh is the FSDP mesh; the sequence dim is split off it rather than flattened into
        # it, because torch deprecates slicing flattened dims out of a root mesh.
        world = init_device_mesh(
            device_type,
            (self.replicate, self.shard * self.sequence),
            mesh_dim_names=("dp_replicate", "dp_shard_sp"),
        )
        full = world._unflatten("dp_shard_sp", (self.shard, self.sequence), ("dp_shard", "sp"))
        data = full["dp_replicate", "dp_shard"]._flatten("dp")
        return ParallelMesh(self, world, data, full["sp"])


@dataclass(frozen=True)
class ParallelMesh:
    """The meshes of a running layout; without a process group (one plain process) every rank query
    answers for rank 0 of 1."""

    dims: ParallelDims
    world: DeviceMesh | None  # ("dp_replicate", "dp_shard_sp")
    data: DeviceMesh | None  # ("dp",)
    sequence: DeviceMesh | None  # ("sp",)

    @property
    def fsdp_mesh(self) -> DeviceMesh:
        """What `fully_shard` gets: 2-D (HSDP) when there are several replicas, else 1-D."""
        if self.world is None:
            raise RuntimeError("FSDP2 needs a process group")
        return self.world if self.dims.replicate > 1 else self.world["dp_shard_sp"]

    @property
    def data_rank(self) -> int:
        return self.data.get_local_rank() if self.data is not None else 0

    @property
    def data_size(self) -> int:
        return self.data.size() if self.data is not None else 1

    @property
    def sequence_rank(self) -> int:
        return self.sequence.get_local_rank() if self.sequence is not None else 0

    def sequence_group(self) -> Any:
        if self.sequence is None:
            raise RuntimeError("sequence parallelism needs a process group")
        return self.sequence.get_group()


def mesh_device_type(device: torch.device) -> str:
    return "cuda" if device.type == "cuda" else "cpu"
