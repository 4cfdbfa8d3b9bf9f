"""Parallelism, applied from outside the model (never inside ltx-core's model code).

`parallelize_transformer` runs between building the model on the meta device (with LoRA injected) and
materialising it, in a fixed order: activation checkpointing per block, then (optionally) compile per
block, then sharding. `lightning_strategy` picks the Lightning strategy for the `parallel` config.
"""

from __future__ import annotations

from ltxdist.parallel.apply import lightning_strategy, parallelize_transformer

__all__ = ["lightning_strategy", "parallelize_transformer"]
