"""Pickle-free Lightning checkpoints: every tensor in one safetensors file, everything else in JSON.

Lightning hands `save_checkpoint` a nested dict (module state, optimizer and scheduler state, loop
progress, callback state). The tree is walked once: tensors are replaced by references into
`tensors.safetensors`, containers that JSON cannot express (int-keyed dicts, tuples) are tagged. A
value of any other type is an error naming its path, never a silent pickle.

A checkpoint is a directory written under a temporary name and renamed when complete; `meta.json`
inside it marks completeness.

Sharded checkpoints (FSDP2): a tensor sharded across processes (a DTensor) is stored as its pieces,
each process writing the rows it holds to `shards/rank-XXXXX.safetensors` (with the rows' position in
the file's metadata); the tree refers to it as `{"__sharded__": key, "shape": [...]}`. Readers take
any row range from the pieces, so a checkpoint written by N processes loads on M, and a process can
read only the rows it will hold. Replicated tensors and the tree are written once, by rank 0.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import CheckpointIO
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from ltxdist.io import TMP_MARKER, atomic_directory, save_safetensors_atomic, write_json_atomic
from ltxdist.parallel.shard_rows import LocalSlice, local_slice

TENSORS_FILE = "tensors.safetensors"
TREE_FILE = "state.json"
COMPLETE_FILE = "meta.json"
SHARDS_DIR = "shards"


class CheckpointFormatError(ValueError):
    pass


_Shards = dict[str, tuple[torch.Tensor, LocalSlice]]


def _encode(obj: Any, path: str, tensors: dict[str, torch.Tensor], shards: _Shards | None = None) -> Any:
    if isinstance(obj, torch.Tensor):
        part = local_slice(obj)
        if part is not None:
            if shards is None:
                raise CheckpointFormatError(
                    f"checkpoint value at {path} is sharded across processes; save it with "
                    "save_sharded_checkpoint (parallel=fsdp2 does)"
                )
            key = f"s{len(shards)}"  # same traversal order on every rank, so the same key everywhere
            shards[key] = (obj.to_local().detach().cpu().contiguous(), part)
            return {"__sharded__": key, "shape": list(obj.shape), "dim": part.dim}
        if hasattr(obj, "to_local"):  # a replicated DTensor: every rank holds all of it
            obj = obj.to_local()
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {"__dict__": {k: _encode(v, f"{path}.{k}", tensors, shards) for k, v in obj.items()}}
        items = []
        for k, v in obj.items():
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                raise CheckpointFormatError(f"checkpoint key {path}[{k!r}] has unsupported type {type(k)}")
            items.append([k, _encode(v, f"{path}[{k!r}]", tensors, shards)])
        return {"__items__": items}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{path}[{i}]", tensors, shards) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{path}[{i}]", tensors, shards) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, torch.dtype):
        return {"__dtype__": str(obj).removeprefix("torch.")}
    raise CheckpointFormatError(
        f"checkpoint value at {path} has type {type(obj).__name__}, which is neither a tensor nor JSON; "
        "ltxdist does not pickle checkpoints"
    )


def _decode(obj: Any, tensors: dict[str, torch.Tensor], shards: ShardSet | None = None) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors, shards) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__sharded__" in obj:
        if shards is None:
            raise CheckpointFormatError("sharded tensor in a checkpoint without shards/ (incomplete copy?)")
        return ShardedTensor(shards, obj["__sharded__"], tuple(obj["shape"]), obj["dim"])
    if "__dict__" in obj:
        return {k: _decode(v, tensors, shards) for k, v in obj["__dict__"].items()}
    if "__items__" in obj:
        return {k: _decode(v, tensors, shards) for k, v in obj["__items__"]}
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors, shards) for v in obj["__tuple__"])
    if "__dtype__" in obj:
        return getattr(torch, obj["__dtype__"])
    raise CheckpointFormatError(f"unknown tagged object in checkpoint: {list(obj)[:3]}")


def is_complete_checkpoint(path: Path) -> bool:
    return path.is_dir() and TMP_MARKER not in path.name and (path / COMPLETE_FILE).is_file()


class ShardSet:
    """The per-rank shard files of one checkpoint, opened lazily; reads any row range of a tensor."""

    def __init__(self, directory: Path, num_files: int):
        self.directory = directory
        self.num_files = num_files
        self._layouts: list[dict[str, list[int]]] | None = None

    def _files(self) -> list[Path]:
        return [self.directory / SHARDS_DIR / f"rank-{r:05d}.safetensors" for r in range(self.num_files)]

    def layouts(self) -> list[dict[str, list[int]]]:
        if self._layouts is None:
            self._layouts = []
            for f in self._files():
                with safe_open(str(f), framework="pt") as handle:
                    self._layouts.append(json.loads((handle.metadata() or {})["layout"]))
        return self._layouts

    def read(self, key: str, dim: int, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) along `dim`, assembled from every file that holds some of them."""
        pieces = []
        for f, layout in zip(self._files(), self.layouts(), strict=True):
            if key not in layout:
                continue
            f_start, f_stop = layout[key]
            lo, hi = max(start, f_start), min(stop, f_stop)
            if lo >= hi:
                continue
            with safe_open(str(f), framework="pt") as handle:
                view = handle.get_slice(key)
                index = [slice(None)] * len(view.get_shape())
                index[dim] = slice(lo - f_start, hi - f_start)
                pieces.append((lo, view[tuple(index)]))
        pieces.sort(key=lambda p: p[0])
        got = sum(t.shape[dim] for _, t in pieces)
        if got != stop - start:
            raise CheckpointFormatError(
                f"{self.directory}: shards hold {got} of rows [{start}, {stop}) of {key}; a shard is missing"
            )
        return torch.cat([t for _, t in pieces], dim=dim)


class ShardedTensor:
    """A tensor stored as per-rank pieces: read all of it, or only the rows a process will hold."""

    def __init__(self, shards: ShardSet, key: str, shape: tuple[int, ...], dim: int):
        self.shards, self.key, self.shape, self.dim = shards, key, shape, dim

    def read(self, part: LocalSlice | None = None) -> torch.Tensor:
        if part is None:
            return self.shards.read(self.key, self.dim, 0, self.shape[self.dim])
        if part.dim != self.dim:
            # Pieces are contiguous along their own dim only; take full rows, then slice.
            full = self.read()
            return full.narrow(part.dim, part.start, part.stop - part.start)
        return self.shards.read(self.key, self.dim, part.start, part.stop)


def read_part(value: torch.Tensor | ShardedTensor, part: LocalSlice | None) -> torch.Tensor:
    """The rows `part` (or everything) of a checkpoint value, whichever way it was stored."""
    if isinstance(value, ShardedTensor):
        return value.read(part)
    return value if part is None else value.narrow(part.dim, part.start, part.stop - part.start)


def _materialize(obj: Any) -> Any:
    if isinstance(obj, ShardedTensor):
        return obj.read()
    if isinstance(obj, dict):
        return {k: _materialize(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_materialize(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_materialize(v) for v in obj)
    return obj


def read_checkpoint(path: str | Path, *, lazy_shards: bool = False) -> dict[str, Any]:
    """The checkpoint dict. Sharded tensors are assembled in full, or with `lazy_shards` left as
    ShardedTensor handles so a process reads only its own rows."""
    path = Path(path)
    if not is_complete_checkpoint(path):
        raise CheckpointFormatError(
            f"{path} is not a complete ltxdist checkpoint (missing {COMPLETE_FILE}); "
            "use run.resume=auto to pick the newest complete one"
        )
    try:
        meta = json.loads((path / COMPLETE_FILE).read_text())
        shards = ShardSet(path, int(meta["shards"])) if meta.get("shards") else None
        tensors = load_file(str(path / TENSORS_FILE))
        tree = _decode(json.loads((path / TREE_FILE).read_text()), tensors, shards)
        if not isinstance(tree, dict):
            raise TypeError(f"{TREE_FILE} holds a {type(tree).__name__}, not the checkpoint's dict")
        return tree if lazy_shards else _materialize(tree)
    except CheckpointFormatError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError, SafetensorError) as exc:
        # Damaged after it was completed (disk error, a file replaced by hand, a pickle put in its place).
        raise CheckpointFormatError(
            f"{path}: damaged checkpoint ({type(exc).__name__}: {exc}); resume from an earlier one "
            "(run.resume=<checkpoint dir>) or start over (run.resume=never)"
        ) from exc


def _write_rank_shards(directory: Path, rank: int, shards: _Shards) -> None:
    tensors = {key: t for key, (t, _) in shards.items()}
    layout = {key: [part.start, part.stop] for key, (_, part) in shards.items()}
    out = directory / SHARDS_DIR / f"rank-{rank:05d}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors_atomic(tensors, out, metadata={"layout": json.dumps(layout)})


def save_sharded_checkpoint(
    checkpoint: dict[str, Any],
    path: str | Path,
    *,
    rank: int,
    world_size: int,
    broadcast: Callable[[Any], Any],
    barrier: Callable[[], None],
) -> None:
    """Collective: every rank calls it. Rank 0 owns the temporary directory (renamed into place only
    after every rank has written its shard file and rank 0 the tree and meta.json), so a kill at any
    point leaves either the complete new checkpoint or none, and the previous one untouched."""
    tensors: dict[str, torch.Tensor] = {}
    shards: _Shards = {}
    tree = _encode(checkpoint, "checkpoint", tensors, shards)
    meta = {"complete": True, "global_step": checkpoint.get("global_step"), "format": 2, "shards": world_size}
    if rank == 0:
        with atomic_directory(path) as tmp:
            broadcast(str(tmp))
            _write_rank_shards(tmp, rank, shards)
            barrier()  # every shard file is written
            save_safetensors_atomic(tensors, tmp / TENSORS_FILE)
            write_json_atomic(tmp / TREE_FILE, tree)
            write_json_atomic(tmp / COMPLETE_FILE, meta)  # last: a directory with meta.json is complete
    else:
        tmp = Path(broadcast(None))
        _write_rank_shards(tmp, rank, shards)
        barrier()
    barrier()  # renamed into place before any rank goes on (e.g. to delete older checkpoints)


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
        # Sharded checkpoints (parallel=fsdp2) load here in full too: any strategy can resume any run.
        return read_checkpoint(path)

    def remove_checkpoint(self, path: Any) -> None:
        shutil.rmtree(path, ignore_errors=True)
