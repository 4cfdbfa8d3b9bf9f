"""Lightning's DeepSpeedStrategy with a generated ZeRO config, CPU support, and pickle-free checkpoints.

Checkpoints: DeepSpeed's own `engine.save_checkpoint` writes `torch.save` pickles, which ltxdist does
not allow. Only the LoRA adapters train, so the whole trainable state is small; it is assembled
through DeepSpeed's public fragment API (`safe_get_full_fp32_param`, `safe_get_full_optimizer_state`:
collective, one tensor at a time) into the same checkpoint every other strategy writes (adapters +
torch AdamW state dict in safetensors + JSON), written by rank 0. Loading goes the other way with
`safe_set_full_*`. Cost: rank 0 holds the full adapter + optimizer state in CPU memory while writing
(12 bytes per adapter parameter in fp32: about 10 GB for rank 128 on every attention of the 22B model);
the frozen base is never saved (it is reloaded from the base checkpoint). Gain: a ZeRO checkpoint
resumes on any number of processes and under any other parallel config.

CPU (tests): Lightning refuses DeepSpeed without CUDA. On `parallel.accelerator=cpu` the CUDA checks
are skipped and DeepSpeed gets an explicit device rank; DeepSpeed itself runs on its CPU accelerator
(DS_ACCELERATOR=cpu) over gloo.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.plugins.precision import DeepSpeedPrecision
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy

from ltxdist.parallel.deepspeed_config import deepspeed_config
from ltxdist.parallel.gather import full_tensor
from ltxdist.parallel.timeouts import CollectiveTimeoutHint, collective_timeout
from ltxdist.training.checkpoint_io import read_checkpoint


class KeepDtypesPrecision(DeepSpeedPrecision):
    """DeepSpeed at "32-true" without the casts: Lightning's DeepSpeed precision would turn the whole
    model (the frozen bf16 base included: twice the memory) and every input into fp32. ltxdist's
    dtypes are explicit (model.dtype, lora.dtype) and the same under every parallel config."""

    def convert_module(self, module: torch.nn.Module) -> torch.nn.Module:
        return module

    def convert_input(self, data: Any) -> Any:
        return data


class LtxDeepSpeedStrategy(CollectiveTimeoutHint, DeepSpeedStrategy):
    # -- CPU support --------------------------------------------------------------------------------
    def setup_environment(self) -> None:
        if isinstance(self.accelerator, CPUAccelerator):
            # DeepSpeedStrategy.setup_environment is a CUDA check followed by exactly this.
            DDPStrategy.setup_environment(self)
        else:
            super().setup_environment()

    def setup_distributed(self) -> None:
        if isinstance(self.accelerator, CPUAccelerator):
            # The parent validates CUDA device indices (CPU devices have none), then does this.
            reset_seed()
            self.set_world_ranks()
            self._init_deepspeed_distributed()
        else:
            super().setup_distributed()

    def _setup_model_and_optimizer(self, model: Any, optimizer: Any, lr_scheduler: Any = None) -> Any:
        import deepspeed

        # The parent's call, with a device rank DeepSpeed accepts on CPU (the parent passes the CUDA
        # index, None there).
        device_rank = self.root_device.index if self.root_device.index is not None else self.local_rank
        engine, ds_optimizer, _, _ = deepspeed.initialize(
            args=argparse.Namespace(device_rank=device_rank),
            config=self.config,
            model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad],
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            dist_init_required=False,
        )
        return engine, ds_optimizer

    @contextmanager
    def model_sharded_context(self) -> Iterator[None]:
        # ZeRO-3 partitioning happens in materialize_transformer, block by block once the weights are
        # loaded; deepspeed.zero.Init around configure_model would try to partition the meta model.
        yield

    # -- checkpoints --------------------------------------------------------------------------------
    def lightning_module_state_dict(self) -> dict[str, Any]:
        module = self.lightning_module
        params = dict(module.named_parameters())
        # The fp32 master weights, assembled from every rank's partition (collective).
        return {name: full_tensor(params[name]).cpu() for name in module.state_dict()}

    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        return _gather_optimizer_state(self.lightning_module, optimizer)  # collective

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        filepath = self.broadcast(filepath)
        if self.is_global_zero:
            self.checkpoint_io.save_checkpoint(checkpoint, filepath)

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        checkpoint = read_checkpoint(self.broadcast(checkpoint_path))
        module = self.lightning_module
        _restore_adapters(module, checkpoint.get("state_dict", {}))
        if module.trainer.state.fn == "fit" and checkpoint.get("optimizer_states"):
            _restore_optimizer_state(module, self.optimizers[0], checkpoint["optimizer_states"][0])
        return checkpoint

    def load_model_state_dict(self, checkpoint: Any, strict: bool = True) -> None:
        pass  # done in load_checkpoint


def build_deepspeed_strategy(parallel_cfg: Any) -> LtxDeepSpeedStrategy:
    on_cpu = parallel_cfg.accelerator == "cpu"
    if on_cpu:
        # Before deepspeed is first imported (DeepSpeedStrategy.__init__ does): it picks its
        # accelerator once per process.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    return LtxDeepSpeedStrategy(
        config=deepspeed_config(parallel_cfg, on_gpu=not on_cpu),
        process_group_backend=parallel_cfg.process_group_backend or ("gloo" if on_cpu else None),
        precision_plugin=KeepDtypesPrecision("32-true"),
        timeout=collective_timeout(parallel_cfg),
    )


# -- moving the trainable state in and out of ZeRO partitions --------------------------------------
def _inner_optimizer(ds_optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer DeepSpeed's ZeRO optimizer steps (over DeepSpeed's flat fp32 partitions)."""
    return ds_optimizer.optimizer


def _flat_fp32_partitions(ds_optimizer: Any) -> list[torch.Tensor]:
    """This rank's flat fp32 master partitions: the tensors DeepSpeed steps the torch optimizer on
    (ZeRO-3 puts them in the torch param groups only during its step, so ask DeepSpeed)."""
    for attr in ("fp32_partitioned_groups_flat", "single_partition_of_fp32_groups"):  # ZeRO-3, ZeRO-1/2
        flats = getattr(ds_optimizer, attr, None)
        if flats is not None:
            return list(flats)
    raise NotImplementedError(f"cannot restore optimizer state into {type(ds_optimizer).__name__}")


def _gather_optimizer_state(module: Any, ds_optimizer: Any) -> dict[str, Any]:
    """The torch AdamW state dict a single process would have (ids in module.lora_parameters() order,
    full fp32 moments): the format every ltxdist checkpoint uses."""
    from deepspeed.utils import safe_get_full_optimizer_state

    inner = _inner_optimizer(ds_optimizer)
    params = module.lora_parameters()
    flat_state = next(iter(inner.state.values()), None)
    groups = [{k: v for k, v in g.items() if k != "params"} for g in inner.param_groups[:1]]
    groups[0]["params"] = list(range(len(params)))
    if flat_state is None:  # no optimizer step yet: nothing to save but the hyper-parameters
        return {"state": {}, "param_groups": groups}
    keys = [k for k, v in flat_state.items() if k != "step" and torch.is_tensor(v) and v.dim() == 1]
    state = {}
    for i, p in enumerate(params):
        entry = {"step": flat_state["step"].detach().cpu().clone()}
        for key in keys:
            entry[key] = safe_get_full_optimizer_state(p, key).detach().cpu().reshape(p.shape)
        state[i] = entry
    return {"state": state, "param_groups": groups}


@torch.no_grad()
def _restore_adapters(module: Any, saved: dict[str, torch.Tensor]) -> None:
    """Set the adapters (DeepSpeed's fp32 master partitions and the module's working copies)."""
    import deepspeed
    from deepspeed.utils import safe_set_full_fp32_param

    params = dict(module.named_parameters())
    for name in module.state_dict():
        if name not in saved:
            continue  # module.on_load_checkpoint names the mismatch
        param, value = params[name], saved[name]
        safe_set_full_fp32_param(param, value.to(device=param.device, dtype=torch.float32))
        # ZeRO-3: gather, let rank 0's copy win, re-partition; ZeRO-2: a plain copy on every rank.
        with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
            param.data.copy_(value.to(device=param.device, dtype=param.dtype).view_as(param.data))


@torch.no_grad()
def _restore_optimizer_state(module: Any, ds_optimizer: Any, saved: dict[str, Any]) -> None:
    from deepspeed.utils import safe_set_full_optimizer_state

    entries = saved.get("state", {})
    if not entries:
        return
    inner = _inner_optimizer(ds_optimizer)
    first = entries[min(entries)]
    keys = [k for k in first if k != "step"]
    # torch AdamW creates its state lazily at the first step; create it now (zeros, the saved step) so
    # the fragments below have somewhere to go. AdamW then finds it non-empty and keeps it.
    for flat in _flat_fp32_partitions(ds_optimizer):
        st = inner.state[flat]
        st["step"] = first["step"].detach().clone().to(torch.float32)
        for key in keys:
            st.setdefault(key, torch.zeros_like(flat))
    # ZeRO-1/2 link each parameter to its slice of the flat state on the first step; do it now.
    link = getattr(ds_optimizer, "_lazy_init_hp_params_optimizer_state", None)
    if link is not None:
        link()
    for i, param in enumerate(module.lora_parameters()):
        for key in keys:
            value = entries[i][key].to(device=param.device, dtype=torch.float32)
            safe_set_full_optimizer_state(param, value, key)
    for group, saved_group in zip(inner.param_groups, saved.get("param_groups", []), strict=False):
        for k, v in saved_group.items():
            if k != "params":
                group[k] = v
