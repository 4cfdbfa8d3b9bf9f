"""W&B logger from the `logger` config group. The API key is read by wandb from the environment
(WANDB_API_KEY) and never printed or written into a config."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from ltxdist.io import TMP_MARKER
from ltxdist.lora.comfy_format import read_lora_header


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
    """Same run directory -> same W&B run, so a resumed job continues its curves. Every rank of a job
    calls this at once: the id file is created whole or not at all (a complete temporary file linked
    to the name, which fails if it exists), so the first rank's id wins and the others read it."""
    import uuid

    id_file = run_dir / "wandb_run_id"
    if id_file.is_file():
        return id_file.read_text().strip()
    id_file.parent.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex[:12]
    tmp = id_file.with_name(f"{id_file.name}{TMP_MARKER}{uuid.uuid4().hex}")
    tmp.write_text(run_id)
    try:
        os.link(tmp, id_file)  # atomic create-if-absent, and the file is never seen empty
    except FileExistsError:
        run_id = id_file.read_text().strip()  # another rank was first
    finally:
        tmp.unlink(missing_ok=True)
    return run_id


class WandbLoRAArtifacts(pl.Callback):
    """Logs each exported LoRA file as a W&B artifact (type `lora`, aliases `step-N` and `latest`).

    Must come after the checkpoint callback in the list, so that the step's file exists. Rank 0 only.
    """

    def __init__(self, run_dir: Path, run_name: str):
        self.run_dir = run_dir
        self.artifact_name = re.sub(r"[^A-Za-z0-9_.-]", "-", run_name) + "-lora"
        self._logged: set[int] = set()

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self._logged.add(trainer.global_step)  # a resumed run's starting file was logged before

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, *args: Any) -> None:
        self._log(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self._log(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: Any, exception: BaseException) -> None:
        # A stop signal ends training from inside CheckpointAndExport right after it wrote the step's
        # LoRA (SystemExit), before this callback's batch-end hook: log that file now, and flush the
        # W&B run before the process exits (as a finished fit does).
        if not isinstance(exception, SystemExit) or not trainer.is_global_zero:
            return
        self._log(trainer)
        from lightning.pytorch.loggers import WandbLogger

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.finish()

    def _log(self, trainer: pl.Trainer) -> None:
        from ltxdist.training.run_dir import lora_path  # here: training imports this module

        step = trainer.global_step
        path = lora_path(self.run_dir, step)
        if not trainer.is_global_zero or step in self._logged or not path.is_file():
            return
        self._logged.add(step)
        import wandb
        from lightning.pytorch.loggers import WandbLogger

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                artifact = wandb.Artifact(
                    self.artifact_name, type="lora", metadata=read_lora_header(path).metadata
                )
                artifact.add_file(str(path))
                logger.experiment.log_artifact(artifact, aliases=[f"step-{step}", "latest"])
