"""The JSON half of a checkpoint: everything that is not a tensor, owned by ltxdist.

Tensors (adapters, optimizer moments) go through torch.distributed.checkpoint; what resumes a run
around them is small and readable here. `extra` is for callers' own fields (e.g. a run identity that
`run.resume=auto` compares before resuming); ltxdist stores it and hands it back untouched.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ltxdist.checkpoint.files import TRAIN_STATE_FILE, CheckpointFormatError


@dataclass
class TrainState:
    step: int  # optimizer steps done
    data: dict[str, Any] = field(default_factory=dict)  # data position, as the training module exposes it
    counters: dict[str, Any] = field(default_factory=dict)  # e.g. non-finite steps skipped
    scheduler: dict[str, Any] | None = None  # the LR scheduler's state_dict
    optimizer: list[dict[str, Any]] = field(default_factory=list)  # param-group hyper-parameters (lr, ...)
    layout: dict[str, Any] = field(default_factory=dict)  # the parallel layout it was written under
    loops: dict[str, Any] | None = None  # Lightning's fit-loop progress (restores its step counters)
    model: dict[str, Any] = field(default_factory=dict)  # base model version, LoRA target modules
    extra: dict[str, Any] = field(default_factory=dict)  # the caller's own fields

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        _check_json(record, "train_state")
        return record

    @classmethod
    def from_json(cls, record: Any, source: str) -> TrainState:
        if not isinstance(record, dict):
            raise CheckpointFormatError(f"{source}: holds a {type(record).__name__}, not an object")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(record) - known)
        if unknown or "step" not in record:
            raise CheckpointFormatError(f"{source}: unexpected fields {unknown} or no step")
        try:
            state = cls(**record)
            state.step = int(state.step)
        except (TypeError, ValueError) as exc:
            raise CheckpointFormatError(f"{source}: {exc}") from exc
        return state


def read_train_state(checkpoint: str | Path) -> TrainState:
    """The train state of a checkpoint directory without reading any tensor (e.g. to check `extra`)."""
    path = Path(checkpoint) / TRAIN_STATE_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointFormatError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from exc
    return TrainState.from_json(record, str(path))


def _check_json(value: Any, where: str) -> None:
    """Only what JSON writes and reads back unchanged: never a silent str() of an object."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise CheckpointFormatError(f"{where}: key {k!r} is not a string")
            _check_json(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_json(v, f"{where}[{i}]")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise CheckpointFormatError(f"{where}: {value} is not a finite number")
    elif value is not None and not isinstance(value, (str, int, bool)):
        raise CheckpointFormatError(
            f"{where}: a {type(value).__name__} is neither JSON nor a tensor; ltxdist does not pickle "
            "checkpoints"
        )
