"""Parallelism, applied from outside the model (never inside ltx-core's model code).

`parallelize_transformer` runs between building the model on the meta device (with LoRA injected) and
materialising it, in a fixed order: activation checkpointing per block, then (optionally) compile per
block, then FSDP2 sharding. `materialize_transformer` then allocates only what each rank keeps and
loads the base weights into it. `lightning_strategy` picks the Lightning strategy for the `parallel`
config (DDP, FSDP2 via ModelParallelStrategy, DeepSpeed ZeRO-2/3 with a generated config).
"""

from __future__ import annotations

from ltxdist.parallel.apply import lightning_strategy, parallelize_transformer
from ltxdist.parallel.materialize import materialize_transformer

__all__ = ["lightning_strategy", "materialize_transformer", "parallelize_transformer"]
