"""Tensors in and out of a checkpoint directory through torch.distributed.checkpoint (DCP) and its
Hugging Face safetensors storage.

Writing: every rank hands DCP its tensors (DTensors as their local pieces; plain tensors that several
ranks hold are written once); each writing rank produces one safetensors file whose metadata records
each piece's offset in the whole tensor. The storage writes no `.metadata` file (that one is a pickle)
in this mode, and nothing else either: only safetensors. A failed write on any rank (full disk, quota)
fails on every rank at once (DCP gathers the outcome), as an `AtomicWriteError` naming the directory.

Reading: rank 0 opens every file once, checks it and reads its header; the others get the resulting
DCP metadata from it (one broadcast instead of every rank parsing every header). DCP plans which rows
each rank needs under the current layout (resharding across process counts and layouts) and each rank
reads them with one open handle per file (rank 0 reuses the handles it opened for the headers).
"""

from __future__ import annotations

import errno
import json
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from safetensors import SafetensorError, safe_open
from torch.distributed.checkpoint import HuggingFaceStorageReader, HuggingFaceStorageWriter
from torch.distributed.checkpoint._hf_utils import CUSTOM_METADATA_KEY, SAVED_OFFSETS_KEY, _HFStorageInfo
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.futures import Future

from ltxdist.checkpoint import collectives
from ltxdist.checkpoint.files import CheckpointFormatError
from ltxdist.io import SAFETENSORS_DTYPES, AtomicWriteError


# -- writing --------------------------------------------------------------------------------------
def write_tensors(directory: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Collective: every rank passes its (same-keyed) tensors; they land in `directory`."""
    for key, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            # DCP would torch.save anything else into the file: never.
            raise CheckpointFormatError(f"checkpoint value {key} is a {type(value).__name__}, not a tensor")
    writer = HuggingFaceStorageWriter(str(directory), save_distributed=True)
    try:
        with _quiet_single_process():
            dcp.save(tensors, storage_writer=writer, no_dist=not collectives.initialized())
    except CheckpointException as exc:
        raise _write_failure(directory, exc) from None
    except OSError as exc:  # one process: DCP raises the error itself
        raise AtomicWriteError(
            exc.errno or errno.EIO, directory, exc.strerror or str(exc), "directory "
        ) from exc


def _write_failure(directory: Path, exc: CheckpointException) -> AtomicWriteError:
    """The first failing rank's error, naming the checkpoint directory, on every rank."""
    for rank, (error, _) in sorted(exc.failures.items()):
        if isinstance(error, OSError):
            reason = f"rank {rank}: {error.strerror or error}"
            return AtomicWriteError(error.errno or errno.EIO, directory, reason, "directory ")
    rank, (error, _) = min(exc.failures.items())
    return AtomicWriteError(
        errno.EIO, directory, f"rank {rank}: {type(error).__name__}: {error}", "directory "
    )


@contextmanager
def _quiet_single_process() -> Any:
    # DCP warns on every single-process save / load that it "assumes" one process: it is meant.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


# -- reading --------------------------------------------------------------------------------------
class TensorFiles:
    """The tensor files of one checkpoint: DCP metadata built from their headers (rank 0) and the open
    handles that serve the reads. Use `open_tensor_files`; `close()` when done."""

    def __init__(self, directory: Path, metadata: Metadata, handles: dict[str, Any]):
        self.directory = directory
        self.metadata = metadata
        self.handles = handles  # file path -> safe_open handle (rank 0: every file; others: on demand)

    @property
    def keys(self) -> set[str]:
        return set(self.metadata.state_dict_metadata)

    def shape(self, key: str) -> torch.Size:
        return self.metadata.state_dict_metadata[key].size  # type: ignore[union-attr]

    def dtype(self, key: str) -> torch.dtype:
        return self.metadata.state_dict_metadata[key].properties.dtype  # type: ignore[union-attr]

    def read_into(self, template: dict[str, torch.Tensor], *, distributed: bool = True) -> None:
        """Fill `template` (plain tensors or DTensors, any layout) from the files. Collective when
        `distributed`; every rank passes the same keys."""
        reader = _OneOpenReader(self)
        try:
            with _quiet_single_process():
                dcp.load(
                    template, storage_reader=reader, no_dist=not (distributed and collectives.initialized())
                )
        except CheckpointException as exc:
            rank, (error, _) = min(exc.failures.items())
            if isinstance(error, CheckpointFormatError):
                raise CheckpointFormatError(str(error)) from None
            raise CheckpointFormatError(
                f"{self.directory}: reading failed on rank {rank} ({type(error).__name__}: {error})"
            ) from None

    def close(self) -> None:
        self.handles.clear()  # safe_open handles close (unmap) when released


def open_tensor_files(directory: Path, names: list[str], *, distributed: bool = True) -> TensorFiles:
    """Collective when `distributed`: rank 0 opens and checks every file, the others receive the
    metadata (or the error naming the damaged file, raised on every rank alike)."""
    share = distributed and collectives.initialized()
    handles: dict[str, Any] = {}
    result: Metadata | str
    if not share or collectives.rank() == 0:
        try:
            result = _read_headers(directory, names, handles)
        except CheckpointFormatError as exc:
            result = str(exc)
    else:
        result = ""
    if share:
        result = collectives.broadcast(result)
    if isinstance(result, str):
        raise CheckpointFormatError(result)
    return TensorFiles(directory, result, handles)


def _read_headers(directory: Path, names: list[str], handles: dict[str, Any]) -> Metadata:
    tensors: dict[str, TensorStorageMetadata] = {}
    storage: dict[MetadataIndex, _HFStorageInfo] = {}
    for name in names:
        path = directory / name
        try:
            handle = safe_open(str(path), framework="pt")
            extra = handle.metadata() or {}
            offsets = json.loads(extra[CUSTOM_METADATA_KEY]) if CUSTOM_METADATA_KEY in extra else {}
            for key in handle.keys():  # noqa: SIM118 (a safe_open handle is not iterable)
                piece = handle.get_slice(key)
                shape = torch.Size(piece.get_shape())
                dtype = SAFETENSORS_DTYPES[piece.get_dtype()]
                offset = torch.Size(offsets[key][SAVED_OFFSETS_KEY] if key in offsets else [0] * len(shape))
                entry = tensors.get(key)
                if entry is None:
                    entry = tensors[key] = TensorStorageMetadata(TensorProperties(dtype=dtype), shape, [])
                elif entry.properties.dtype != dtype:
                    raise ValueError(f"{key} is {dtype} here, {entry.properties.dtype} in another file")
                entry.chunks.append(ChunkStorageMetadata(offsets=offset, sizes=shape))
                entry.size = torch.Size(
                    max(a, o + s) for a, o, s in zip(entry.size, offset, shape, strict=True)
                )
                storage[MetadataIndex(fqn=key, offset=offset)] = _HFStorageInfo(
                    relative_path=str(path), shape=shape, dtype=dtype
                )
        except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
            raise CheckpointFormatError(f"{path}: damaged ({type(exc).__name__}: {exc})") from exc
        handles[str(path)] = handle
    for key, entry in tensors.items():
        covered = sum(torch.Size(c.sizes).numel() for c in entry.chunks)
        if covered != entry.size.numel():
            raise CheckpointFormatError(
                f"{directory}: the pieces of {key} cover {covered} of {entry.size.numel()} elements (a file "
                "is missing or from another checkpoint)"
            )
    metadata = Metadata(state_dict_metadata=tensors, storage_data=storage)  # type: ignore[arg-type]
    metadata.storage_meta = StorageMeta()
    return metadata


class _OneOpenReader(HuggingFaceStorageReader):
    """DCP's Hugging Face reader with the metadata handed in and one handle per file."""

    def __init__(self, files: TensorFiles):
        super().__init__(path=str(files.directory))
        self._files = files

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        return self._files.metadata

    def read_data(self, plan: Any, planner: Any) -> Future[None]:
        per_file: dict[str, list[Any]] = {}
        for item in plan.items:
            per_file.setdefault(self.storage_data[item.storage_index].relative_path, []).append(item)
        for name, requests in per_file.items():
            handle = self._files.handles.get(name)
            if handle is None:
                try:
                    handle = self._files.handles[name] = safe_open(name, framework="pt")
                except (OSError, SafetensorError) as exc:
                    raise CheckpointFormatError(f"{name}: unreadable ({exc})") from exc
            for request in requests:
                self._process_read_request(handle, request, planner)
        done: Future[None] = Future()
        done.set_result(None)
        return done
