"""W&B logger from the `logger` config group. The API key is read by wandb from the environment
(WANDB_API_KEY) and never printed or written into a config."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def resolve_wandb_mode(mode: str) -> str:
    """auto: online only when a key is in the environment, else offline (no network needed)."""
    if mode != "auto":
        return mode
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def build_wandb_logger(cfg: Any, run_dir: Path, run_name: str, resolved_config: dict[str, Any]) -> Any:
    from lightning.pytorch.loggers import WandbLogger

    mode = resolve_wandb_mode(cfg.mode)
    logger = WandbLogger(
        project=cfg.project,
        entity=cfg.entity,
        name=run_name,
        save_dir=str(run_dir),
        mode=mode,
        tags=list(cfg.tags),
        id=_stable_run_id(run_dir),
        resume="allow",
    )
    logger.log_hyperparams(resolved_config)
    return logger


def _stable_run_id(run_dir: Path) -> str:
    # Same run directory -> same W&B run, so a resumed job continues its curves.
    id_file = run_dir / "wandb_run_id"
    if id_file.is_file():
        return id_file.read_text().strip()
    import uuid

    run_id = uuid.uuid4().hex[:12]
    id_file.parent.mkdir(parents=True, exist_ok=True)
    id_file.write_text(run_id)
    return run_id
