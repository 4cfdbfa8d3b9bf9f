"""Lightning's DeepSpeedStrategy with a generated ZeRO config, CPU support and the run's layout mesh.

Checkpoints do not go through DeepSpeed's own `engine.save_checkpoint` (it writes `torch.save`
pickles): ltxdist.checkpoint assembles the trainable state through DeepSpeed's public fragment API
(ltxdist/checkpoint/deepspeed_state.py) into the same checkpoint every other layout writes.

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
from ltxdist.parallel.dims import ParallelDims
from ltxdist.parallel.layout_strategy import LayoutMeshMixin
from ltxdist.parallel.timeouts import CollectiveTimeoutHint, collective_timeout


class KeepDtypesPrecision(DeepSpeedPrecision):
    """DeepSpeed at "32-true" without the casts: Lightning's DeepSpeed precision would turn the whole
    model (the frozen bf16 base included: twice the memory) and every input into fp32. ltxdist's
    dtypes are explicit (model.dtype, lora.dtype) and the same under every parallel config."""

    def convert_module(self, module: torch.nn.Module) -> torch.nn.Module:
        return module

    def convert_input(self, data: Any) -> Any:
        return data


class LtxDeepSpeedStrategy(LayoutMeshMixin, CollectiveTimeoutHint, DeepSpeedStrategy):
    def __init__(self, *, dims: ParallelDims, **kwargs: Any):
        super().__init__(**kwargs)
        self.parallel_dims = dims

    # -- CPU support --------------------------------------------------------------------------------
    def setup_environment(self) -> None:
        if isinstance(self.accelerator, CPUAccelerator):
            # DeepSpeedStrategy.setup_environment is a CUDA check followed by exactly this.
            DDPStrategy.setup_environment(self)
        else:
            super().setup_environment()
        self.build_parallel_mesh()

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


def build_deepspeed_strategy(parallel_cfg: Any, dims: ParallelDims) -> LtxDeepSpeedStrategy:
    on_cpu = parallel_cfg.accelerator == "cpu"
    if on_cpu:
        # Before deepspeed is first imported (DeepSpeedStrategy.__init__ does): it picks its
        # accelerator once per process.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    return LtxDeepSpeedStrategy(
        dims=dims,
        config=deepspeed_config(parallel_cfg, on_gpu=not on_cpu),
        process_group_backend=parallel_cfg.process_group_backend or ("gloo" if on_cpu else None),
        precision_plugin=KeepDtypesPrecision("32-true"),
        timeout=collective_timeout(parallel_cfg),
    )
