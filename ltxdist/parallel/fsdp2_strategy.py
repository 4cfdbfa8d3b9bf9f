"""Lightning's ModelParallelStrategy (FSDP2 in `configure_model`) with ltxdist's pickle-free checkpoints.

Lightning's own sharded checkpoints use torch.distributed.checkpoint, whose `.metadata` file is a
pickle, plus a `torch.save`d dict; ltxdist stores only safetensors + JSON. The state saved is the
same as under every other strategy (the LoRA adapters and the torch AdamW state dict keyed by the
adapters' order) with each sharded tensor written as per-rank pieces
(`save_sharded_checkpoint`). Loading reads, for each tensor, only the rows this rank holds under the
current world size, from pieces or from a full tensor: resuming works across process counts and from
single / DDP / DeepSpeed checkpoints.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy

from ltxdist.parallel.shard_rows import local_slice, local_tensor
from ltxdist.parallel.timeouts import CollectiveTimeoutHint
from ltxdist.training.checkpoint_io import read_checkpoint, read_part, save_sharded_checkpoint


class FSDP2Strategy(CollectiveTimeoutHint, ModelParallelStrategy):
    def __init__(
        self, *, world_size: int, process_group_backend: str | None = None, timeout: timedelta | None = None
    ):
        # Pure data parallel: one mesh dimension over all processes, no tensor parallelism.
        super().__init__(
            data_parallel_size=world_size,
            tensor_parallel_size=1,
            save_distributed_checkpoint=True,
            process_group_backend=process_group_backend,
            **({"timeout": timeout} if timeout is not None else {}),  # else Lightning's default
        )

    def setup_environment(self) -> None:
        if self.num_nodes * self.num_processes != self._data_parallel_size:
            raise ValueError(
                f"parallel.devices x parallel.num_nodes = {self._data_parallel_size}, but Lightning sees "
                f"{self.num_nodes} node(s) x {self.num_processes} process(es): set parallel.devices to the "
                "number of processes per node (torchrun --nproc_per_node)"
            )
        super().setup_environment()

    # -- what is saved -------------------------------------------------------------------------------
    def lightning_module_state_dict(self) -> dict[str, Any]:
        # The module's own state_dict (adapters only, as DTensors); Lightning's default would ask DCP
        # for the full model state.
        assert self.lightning_module is not None
        return self.lightning_module.state_dict()

    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        # The plain torch state dict: integer parameter ids in the order of module.lora_parameters(),
        # DTensor moments. Identical in structure to what single / DDP runs save.
        return getattr(optimizer, "_optimizer", optimizer).state_dict()

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError("FSDP2Strategy.save_checkpoint does not take storage_options")
        save_sharded_checkpoint(
            checkpoint,
            self.broadcast(filepath),
            rank=self.global_rank,
            world_size=self.world_size,
            broadcast=self.broadcast,
            barrier=self.barrier,
        )

    # -- what is loaded ------------------------------------------------------------------------------
    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        checkpoint = read_checkpoint(self.broadcast(checkpoint_path), lazy_shards=True)
        module = self.lightning_module
        assert module is not None
        saved = checkpoint.get("state_dict", {})
        params = dict(module.named_parameters())
        with torch.no_grad():
            for name in module.state_dict():
                if name in saved:  # a mismatch is reported by module.on_load_checkpoint, naming keys
                    _copy_rows(params[name], saved[name])
        if module.trainer.state.fn == "fit":
            states = checkpoint.get("optimizer_states", [])
            for optimizer, state in zip(self.optimizers, states, strict=False):
                optimizer.load_state_dict(local_optimizer_state(optimizer, state))
        # Everything else (loops, schedulers, callbacks, data position) is restored by Lightning from
        # this dict; the adapters in it stay lazy handles, nothing reads them again.
        return checkpoint

    # Lightning's ModelParallelStrategy already skips its own model/optimizer restore after this.


def _copy_rows(param: torch.Tensor, value: Any) -> None:
    local = local_tensor(param)
    local.copy_(read_part(value, local_slice(param)).to(dtype=local.dtype))


def local_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> dict[str, Any]:
    """The saved torch optimizer state with every per-parameter tensor cut to this rank's rows and
    wrapped like its parameter (same mesh and placements), ready for `optimizer.load_state_dict`."""
    from torch.distributed.tensor import DTensor

    params = [p for group in optimizer.param_groups for p in group["params"]]
    out: dict[Any, Any] = {}
    for pid, entry in state.get("state", {}).items():
        param = params[int(pid)]
        part = local_slice(param)
        restored = {}
        for key, value in entry.items():
            per_param = tuple(getattr(value, "shape", ())) == tuple(param.shape) and key != "step"
            if not per_param:
                restored[key] = value  # e.g. the step counter: a scalar, the same on every rank
                continue
            rows = read_part(value, part)
            if isinstance(param, DTensor):
                rows = DTensor.from_local(
                    rows,
                    param.device_mesh,
                    param.placements,
                    run_check=False,
                    shape=param.shape,
                    stride=param.stride(),
                )
            restored[key] = rows
        out[pid] = restored
    return {"state": out, "param_groups": state["param_groups"]}
