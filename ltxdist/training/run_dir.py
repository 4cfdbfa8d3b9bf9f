"""The run directory layout: where checkpoints, LoRA files and metrics live; what a kill left behind;
where the checkpoints of an abandoned branch go (never deleted)."""

from __future__ import annotations

import datetime
import logging
import os
import re
import shutil
from pathlib import Path

from ltxdist.checkpoint import is_complete_checkpoint
from ltxdist.io import TMP_MARKER

_STEP_RE = re.compile(r"^step-(\d+)$")
# lora_path's file name, and its step read back (abandon_later_steps)
_LORA_PREFIX, _LORA_SUFFIX = "lora_weights_step_", ".safetensors"
_LORA_STEP_RE = re.compile(rf"^{_LORA_PREFIX}(\d+){re.escape(_LORA_SUFFIX)}$")
# A checkpoint keep-last-k is deleting is renamed to this first: a kill mid-delete leaves a name that
# start-up cleanup (remove_partial_checkpoints) removes, never a half-deleted step-N.
DELETING_SUFFIX = TMP_MARKER + "deleting"

log = logging.getLogger("ltxdist")


class ResumeError(ValueError):
    pass


def checkpoints_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def lora_dir(run_dir: Path) -> Path:
    return run_dir / "lora"


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return checkpoints_dir(run_dir) / f"step-{step:06d}"


def lora_path(run_dir: Path, step: int) -> Path:
    return lora_dir(run_dir) / f"{_LORA_PREFIX}{step:06d}{_LORA_SUFFIX}"


def complete_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first; partial ones are ignored."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and is_complete_checkpoint(p):
            found.append((int(m.group(1)), p))
    return sorted(found)


def delete_checkpoint(path: Path) -> None:
    """Remove a checkpoint directory: renamed to a temporary name first (one rename, atomic), then
    deleted, so a kill mid-delete never leaves a damaged directory under a checkpoint's name."""
    doomed = path.with_name(path.name + DELETING_SUFFIX)
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def abandoned_dir(run_dir: Path) -> Path:
    return run_dir / "abandoned"


def abandon_later_steps(run_dir: Path, step: int) -> Path | None:
    """A run continued from step `step` while its folder holds later checkpoints (an explicit older
    checkpoint, or a newer one that is damaged): those checkpoints and their LoRA files belong to a
    branch this run abandons. They are moved (never deleted) into RUN/abandoned/<step>-<utc time>/,
    with a copy of metrics.jsonl, so that neither keep-last-k nor a later run.resume=auto can mistake
    them for this run's. Returns that folder, or None when nothing was later."""
    later = [p for s, p in complete_checkpoints(run_dir) if s > step]
    if not later:
        # No branch: a LoRA file newer than the newest checkpoint is what a kill between the export and
        # the checkpoint write left; the resumed run writes it again, identically.
        return None
    loras = []
    if lora_dir(run_dir).is_dir():
        for path in sorted(lora_dir(run_dir).iterdir()):
            m = _LORA_STEP_RE.match(path.name)
            if m and int(m.group(1)) > step:
                loras.append(path)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = abandoned_dir(run_dir) / f"{step:06d}-{stamp}"
    suffix = 1
    while target.exists():  # two branches abandoned within one second
        target = abandoned_dir(run_dir) / f"{step:06d}-{stamp}-{suffix}"
        suffix += 1
    for folder, paths in (("checkpoints", later), ("lora", loras)):
        if paths:
            (target / folder).mkdir(parents=True, exist_ok=True)
        for path in paths:
            os.replace(path, target / folder / path.name)  # same file system: a rename
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        # The resumed run drops the later steps' lines from metrics.jsonl: the abandoned branch keeps them.
        shutil.copyfile(metrics, target / "metrics.jsonl")
    log.warning(
        "resuming at step %d: moved the later steps of the abandoned branch (checkpoints %s, LoRA files %s) "
        "to %s",
        step,
        [p.name for p in later] or "none",
        [p.name for p in loras] or "none",
        target,
    )
    return target


def remove_partial_checkpoints(run_dir: Path) -> None:
    """Temporary checkpoint directories a killed writer left (never complete). A checkpoint moved aside
    for an overwrite (`step-N.tmp-old`) whose replacement never arrived is put back."""
    root = checkpoints_dir(run_dir)
    if root.is_dir():
        for path in root.iterdir():
            if path.name.endswith(TMP_MARKER + "old") and path.is_dir():
                target = path.with_name(path.name[: -len(TMP_MARKER + "old")])
                if not target.exists():
                    os.replace(path, target)
                    continue
            if TMP_MARKER in path.name and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)


def remove_partial_files(run_dir: Path) -> None:
    """What a process killed while writing left behind: temporary checkpoint directories and temporary
    LoRA / metrics files."""
    remove_partial_checkpoints(run_dir)
    for folder in (lora_dir(run_dir), run_dir):
        if folder.is_dir():
            for path in folder.iterdir():
                if TMP_MARKER in path.name and path.is_file():
                    path.unlink(missing_ok=True)
