"""The run directory layout: where checkpoints, LoRA files and metrics live; what a kill left behind."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from ltxdist.checkpoint import is_complete_checkpoint
from ltxdist.io import TMP_MARKER

_STEP_RE = re.compile(r"^step-(\d+)$")


class ResumeError(ValueError):
    pass


def checkpoints_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def lora_dir(run_dir: Path) -> Path:
    return run_dir / "lora"


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return checkpoints_dir(run_dir) / f"step-{step:06d}"


def lora_path(run_dir: Path, step: int) -> Path:
    return lora_dir(run_dir) / f"lora_weights_step_{step:06d}.safetensors"


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
