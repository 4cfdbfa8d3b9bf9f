"""Pickle-free Lightning checkpoints: every tensor in one safetensors file, everything else in JSON.

Lightning hands `save_checkpoint` a nested dict (module state, optimizer and scheduler state, loop
progress, callback state). The tree is walked once: tensors are replaced by references into
`tensors.safetensors`, containers that JSON cannot express (int-keyed dicts, tuples) are tagged. A
value of any other type is an error naming its path, never a silent pickle.

A checkpoint is a directory written under a temporary name and renamed when complete; `meta.json`
inside it marks completeness.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import CheckpointIO
from safetensors.torch import load_file

from ltxdist.io import TMP_MARKER, atomic_directory, save_safetensors_atomic, write_json_atomic

TENSORS_FILE = "tensors.safetensors"
TREE_FILE = "state.json"
COMPLETE_FILE = "meta.json"


class CheckpointFormatError(ValueError):
    pass


def _encode(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {"__dict__": {k: _encode(v, f"{path}.{k}", tensors) for k, v in obj.items()}}
        items = []
        for k, v in obj.items():
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                raise CheckpointFormatError(f"checkpoint key {path}[{k!r}] has unsupported type {type(k)}")
            items.append([k, _encode(v, f"{path}[{k!r}]", tensors)])
        return {"__items__": items}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{path}[{i}]", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{path}[{i}]", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, torch.dtype):
        return {"__dtype__": str(obj).removeprefix("torch.")}
    raise CheckpointFormatError(
        f"checkpoint value at {path} has type {type(obj).__name__}, which is neither a tensor nor JSON; "
        "ltxdist does not pickle checkpoints"
    )


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__dict__" in obj:
        return {k: _decode(v, tensors) for k, v in obj["__dict__"].items()}
    if "__items__" in obj:
        return {k: _decode(v, tensors) for k, v in obj["__items__"]}
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__dtype__" in obj:
        return getattr(torch, obj["__dtype__"])
    raise CheckpointFormatError(f"unknown tagged object in checkpoint: {list(obj)[:3]}")


def is_complete_checkpoint(path: Path) -> bool:
    return path.is_dir() and TMP_MARKER not in path.name and (path / COMPLETE_FILE).is_file()


class SafetensorsCheckpointIO(CheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        tensors: dict[str, torch.Tensor] = {}
        tree = _encode(checkpoint, "checkpoint", tensors)
        step = checkpoint.get("global_step")
        with atomic_directory(path) as tmp:
            save_safetensors_atomic(tensors, tmp / TENSORS_FILE)
            write_json_atomic(tmp / TREE_FILE, tree)
            # written last: a directory with meta.json is complete
            write_json_atomic(tmp / COMPLETE_FILE, {"complete": True, "global_step": step, "format": 1})

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: Any = None
    ) -> dict[str, Any]:
        path = Path(path)
        if not is_complete_checkpoint(path):
            raise CheckpointFormatError(
                f"{path} is not a complete ltxdist checkpoint (missing {COMPLETE_FILE}); "
                "use run.resume=auto to pick the newest complete one"
            )
        tensors = load_file(str(path / TENSORS_FILE))
        tree = json.loads((path / TREE_FILE).read_text())
        return _decode(tree, tensors)

    def remove_checkpoint(self, path: Any) -> None:
        shutil.rmtree(path, ignore_errors=True)
