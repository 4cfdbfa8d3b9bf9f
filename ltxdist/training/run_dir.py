"""The run directory layout and finding the checkpoint to resume from."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path

from ltxdist.io import TMP_MARKER
from ltxdist.training.checkpoint_io import is_complete_checkpoint

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


def resolve_resume(run_dir: Path, resume: str) -> Path | None:
    """run.resume: auto -> newest complete checkpoint or None; never -> None; must -> newest or error;
    anything else -> that checkpoint directory, which must be complete."""
    if resume == "never":
        return None
    if resume in ("auto", "must"):
        found = complete_checkpoints(run_dir)
        if found:
            return found[-1][1]
        if resume == "must":
            raise ResumeError(f"run.resume=must but {checkpoints_dir(run_dir)} holds no complete checkpoint")
        return None
    path = Path(resume)
    if not is_complete_checkpoint(path):
        raise ResumeError(f"run.resume={resume}: not a complete checkpoint directory (needs meta.json)")
    return path


def remove_partial_files(run_dir: Path) -> None:
    """What a process killed while writing left behind: temporary checkpoint directories (never
    complete) and temporary LoRA / metrics files. Runs before the checkpoint to resume from is chosen
    (a checkpoint moved aside for an overwrite comes back first), on every rank: each step tolerates
    another rank doing the same at the same time, and nothing is written before every rank is here."""
    _remove_partial_checkpoints(run_dir)
    for folder in (lora_dir(run_dir), run_dir):
        if folder.is_dir():
            for path in folder.iterdir():
                if TMP_MARKER in path.name and path.is_file():
                    path.unlink(missing_ok=True)


def _remove_partial_checkpoints(run_dir: Path) -> None:
    """Temporary checkpoint directories (never complete). A checkpoint moved aside for an overwrite
    (`step-N.tmp-old`) whose replacement never arrived is put back."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return
    for path in root.iterdir():
        if path.name.endswith(TMP_MARKER + "old") and path.is_dir():
            target = path.with_name(path.name[: -len(TMP_MARKER + "old")])
            if not target.exists():
                with contextlib.suppress(FileNotFoundError):  # another rank put it back first
                    os.replace(path, target)
                continue
        if TMP_MARKER in path.name and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
