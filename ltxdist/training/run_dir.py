"""The run directory layout and finding the checkpoint to resume from."""

from __future__ import annotations

import re
from pathlib import Path

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
    force -> as auto (run_identity.decide_resume then accepts changed settings); anything else -> that
    checkpoint directory, which must be complete."""
    if resume == "never":
        return None
    if resume in ("auto", "must", "force"):
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
