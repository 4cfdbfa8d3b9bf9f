"""Save and load one checkpoint directory (files.py): tensors through DCP, the train state as JSON.

Every function here is collective when a process group exists: all ranks call it together. Ranks come
from the process group (collectives.py), so it works the same under torchrun, SLURM or Lightning.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ltxdist.checkpoint import collectives
from ltxdist.checkpoint.files import (
    COMPLETE_FILE,
    TRAIN_STATE_FILE,
    CheckpointFormatError,
    LegacyCheckpointError,
    read_manifest,
    write_manifest_record,
)
from ltxdist.checkpoint.storage import TensorFiles, open_tensor_files, write_tensors
from ltxdist.checkpoint.train_state import TrainState, read_train_state
from ltxdist.checkpoint.trainable import (
    MODEL_PREFIX,
    OPTIM_PREFIX,
    Trainable,
    check_same_adapters,
)
from ltxdist.io import AtomicDirectory, AtomicWriteError, write_json_atomic

log = logging.getLogger("ltxdist")


def save_checkpoint(path: str | Path, trainable: Trainable, state: TrainState) -> None:
    """Write checkpoint `path` as a whole or not at all (any previous one there stays until the new one
    is complete). A failed write on any rank raises `AtomicWriteError` naming `path` on every rank."""
    path = Path(path)
    tensors = trainable.tensors()  # collective under DeepSpeed
    state.optimizer = trainable.hyperparameters()
    record = state.to_json()  # checked before anything is written
    # Rank 0 owns the temporary directory: every rank writes into it, rank 0 completes and renames it.
    directory: AtomicDirectory | None = None
    error: OSError | None = None
    if collectives.rank() == 0:
        try:
            directory = AtomicDirectory(path)
        except OSError as exc:
            error = exc
    tmp = collectives.broadcast(str(directory.tmp) if directory is not None else None)
    _raise_together(error, path)
    try:
        write_tensors(Path(tmp), tensors)  # every rank fails together if one rank's write fails
    except BaseException:
        if directory is not None:
            directory.abort()
        raise
    del tensors
    if directory is not None:
        try:
            write_json_atomic(directory.tmp / TRAIN_STATE_FILE, record)
            # Last: a directory with meta.json is complete. It lists every file with its size.
            write_json_atomic(directory.tmp / COMPLETE_FILE, write_manifest_record(directory.tmp, state.step))
            directory.commit()
        except OSError as exc:
            directory.abort()
            error = exc
    _raise_together(error, path)


def _raise_together(error: OSError | None, path: Path) -> None:
    """Rank 0's write error (or None) raised on every rank: the others would otherwise wait for it in
    their next collective until the timeout."""
    shared = collectives.broadcast(
        None if error is None else (error.errno, getattr(error, "reason", str(error)))
    )
    if error is not None:
        raise error
    if shared is not None:
        raise AtomicWriteError(shared[0] or errno.EIO, path, f"rank 0: {shared[1]}", "directory ")


def load_checkpoint(
    path: str | Path,
    trainable: Trainable,
    *,
    with_train_state: bool = True,
    keep_hyperparameters: bool = False,
) -> TrainState:
    """Read checkpoint `path` into `trainable` (adapters in place, optimizer state through its API).

    `with_train_state`: a resume, which also takes the optimizer's hyper-parameters (lr, ...) from the
    checkpoint, unless `keep_hyperparameters` (a resume with changed settings on purpose: this run's
    optimizer settings win); without, a warm start: adapters and optimizer moments only, this run's own
    settings and schedule kept. Returns the checkpoint's train state either way (the caller applies
    what it needs). Raises `CheckpointFormatError` naming the file when a file is damaged, on every rank
    alike."""
    path = Path(path)
    manifest, state = _read_small_files(path)
    files = open_tensor_files(path, manifest.tensor_files)
    try:
        shapes = {k: (files.shape(k), files.dtype(k)) for k in files.keys}
        check_same_adapters(trainable.params, shapes, str(path))
        template = trainable.template(shapes)
        files.read_into(template)
        saved_settings = with_train_state and not keep_hyperparameters
        trainable.apply(template, state.optimizer if saved_settings else None)
    finally:
        files.close()
    return state


def check_checkpoint(path: str | Path) -> TrainState:
    """Everything `load_checkpoint` checks before reading tensor data, in this process and without a
    model: meta.json (an old format raises LegacyCheckpointError with its convert command), every file
    at its recorded size, train_state.json and each tensor file's header. Returns the train state;
    raises `CheckpointFormatError` naming the damaged file. Lets rank 0 choose the checkpoint to resume
    (and check its run identity) before any model exists, so the one checked is the one loaded."""
    path = Path(path)
    manifest = read_manifest(path)
    state = read_train_state(path)
    open_tensor_files(path, manifest.tensor_files, distributed=False).close()
    return state


def _read_small_files(path: Path) -> tuple[Any, TrainState]:
    """meta.json and train_state.json, read by rank 0 and shared (errors raised on every rank)."""
    result: Any
    if collectives.rank() == 0:
        try:
            result = (read_manifest(path), read_train_state(path))
        except CheckpointFormatError as exc:
            result = exc
    else:
        result = None
    result = collectives.broadcast(result)
    if isinstance(result, CheckpointFormatError):
        raise result
    return result


def load_newest(candidates: Sequence[Path], load: Any, *, fall_back: bool = True) -> tuple[Path, TrainState]:
    """`load(path)` on the newest of `candidates` (oldest first); a damaged one is reported naming its
    file and, with `fall_back`, the next older complete one is tried. Raises the newest error when none
    loads. A checkpoint of an earlier format is never skipped: its error says how to convert it."""
    errors: list[CheckpointFormatError] = []
    for path in reversed(candidates):
        try:
            return path, load(path)
        except LegacyCheckpointError:
            raise
        except CheckpointFormatError as exc:
            errors.append(exc)
            if not fall_back:
                break
            log.warning("checkpoint %s is damaged (%s); trying the previous complete one", path, exc)
    if errors:
        if len(errors) > 1:
            raise CheckpointFormatError(f"{errors[0]} (and no earlier checkpoint loads: {errors[-1]})")
        raise errors[0]
    raise CheckpointFormatError("no checkpoint to load")


@dataclass
class CheckpointContents:
    """A whole checkpoint in one process (tools, tests): full tensors, whatever layout wrote it."""

    adapters: dict[str, torch.Tensor]  # fqn -> adapter
    optimizer: dict[str, dict[str, torch.Tensor]]  # fqn -> {exp_avg, exp_avg_sq, step, ...}
    train_state: TrainState


def read_checkpoint(path: str | Path) -> CheckpointContents:
    """Everything in checkpoint `path`, assembled in this process (no process group needed)."""
    path = Path(path)
    manifest = read_manifest(path)
    state = read_train_state(path)
    files: TensorFiles = open_tensor_files(path, manifest.tensor_files, distributed=False)
    try:
        template = {k: torch.empty(files.shape(k), dtype=files.dtype(k)) for k in files.keys}
        files.read_into(template, distributed=False)
    finally:
        files.close()
    adapters = {k[len(MODEL_PREFIX) :]: v for k, v in template.items() if k.startswith(MODEL_PREFIX)}
    optimizer: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in template.items():
        if key.startswith(OPTIM_PREFIX):
            fqn, name = key[len(OPTIM_PREFIX) :].rsplit(".", 1)
            optimizer.setdefault(fqn, {})[name] = value
    return CheckpointContents(adapters=adapters, optimizer=optimizer, train_state=state)
