"""What one rank materialised of the frozen base: a diagnostic for "no rank ever holds the whole model".

Set `LTXDIST_MATERIALIZE_REPORT=DIR` and every rank writes `DIR/rank-XXXXX.json` after
`materialize_transformer`: the base parameters it holds (elements and bytes) against the full model,
the peak bytes of base weights it held at any point while materialising, and the largest tensor the
loader read from the checkpoint file. Counting is done on the tensors themselves (FSDP2 local shards,
DeepSpeed ZeRO-3 partitions, plain tensors; meta tensors hold nothing), not taken from the design.
The multi-process tests use it; on a real run it answers "why did rank 0 run out of memory loading?".
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ltxdist.io import write_json_atomic

REPORT_ENV = "LTXDIST_MATERIALIZE_REPORT"
_ADAPTER_SUFFIXES = (".lora_A", ".lora_B")


def _held_elements(param: torch.Tensor) -> int:
    """Elements of `param` stored on this rank right now."""
    from torch.distributed.tensor import DTensor

    if isinstance(param, DTensor):
        local = param.to_local()
        return 0 if local.is_meta else local.numel()
    if param.is_meta:
        return 0
    held = param.numel()  # a partitioned ZeRO-3 parameter keeps an empty placeholder here
    partition = getattr(param, "ds_tensor", None)
    if partition is not None:
        held += partition.numel()
    return held


def _full_elements(param: torch.Tensor) -> int:
    return int(getattr(param, "ds_numel", param.numel()))  # ZeRO-3 keeps the full size in ds_numel


def _base_params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p for name, p in model.named_parameters() if not name.endswith(_ADAPTER_SUFFIXES)]


def held_base_bytes(model: torch.nn.Module) -> int:
    return sum(_held_elements(p) * p.element_size() for p in _base_params(model))


class MaterializeReport:
    """Collects the figures while a model is materialised and `write()` saves them, when
    `LTXDIST_MATERIALIZE_REPORT` is set; otherwise every call is a no-op (no parameter walks)."""

    def __init__(self, model: torch.nn.Module, parallel_name: str):
        self.model, self.parallel_name = model, parallel_name
        self.enabled = bool(os.environ.get(REPORT_ENV))
        self.peak_base_bytes = 0
        self.largest_read_elements = 0

    def sample(self) -> None:
        """Call after every allocation step: the peak is the largest of these samples."""
        if self.enabled:
            self.peak_base_bytes = max(self.peak_base_bytes, held_base_bytes(self.model))

    def on_read(self, tensor: torch.Tensor) -> None:
        self.largest_read_elements = max(self.largest_read_elements, tensor.numel())

    def figures(self) -> dict[str, Any]:
        import torch.distributed as dist

        params = _base_params(self.model)
        distributed = dist.is_available() and dist.is_initialized()
        return {
            "rank": dist.get_rank() if distributed else 0,
            "world_size": dist.get_world_size() if distributed else 1,
            "parallel": self.parallel_name,
            "base_elements_full": sum(_full_elements(p) for p in params),
            "base_bytes_full": sum(_full_elements(p) * p.element_size() for p in params),
            "base_elements_held": sum(_held_elements(p) for p in params),
            "largest_base_tensor_elements": max((_full_elements(p) for p in params), default=0),
            "peak_base_bytes": self.peak_base_bytes,
            "largest_read_elements": self.largest_read_elements,
        }

    def write(self) -> Path | None:
        if not self.enabled:
            return None
        figures = self.figures()
        out = Path(os.environ[REPORT_ENV]) / f"rank-{figures['rank']:05d}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out, figures)
        return out
