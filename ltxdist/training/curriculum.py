"""Staged curriculum in one command: stages run in order, each with its own data, step count and
overrides; the LoRA and the AdamW moments carry from one stage to the next.

Layout: RUN/stages/NN-name/ is an ordinary run directory per stage (checkpoints, lora/, metrics.jsonl),
RUN/stages/NN-name/stage_complete.json marks a finished stage, RUN/lora/ receives the final LoRA and
RUN/curriculum.json lists the stages. Re-running the same command skips finished stages and resumes the
interrupted one from its newest complete checkpoint (run.resume=auto inside the stage).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ltxdist.config.schema import ConfigError, validate_config
from ltxdist.io import atomic_file, write_json_atomic
from ltxdist.parallel.dims import ParallelDims
from ltxdist.training.checkpointing import check_warm_start_supported
from ltxdist.training.run_dir import complete_checkpoints, lora_dir, lora_path
from ltxdist.training.run_identity import check_finished_run, new_run_flag

log = logging.getLogger("ltxdist")
STAGE_DONE = "stage_complete.json"


def stage_dir(run_dir: Path, index: int, name: str) -> Path:
    return run_dir / "stages" / f"{index + 1:02d}-{name}"


def stage_config(cfg: Any, index: int, previous: Path | None) -> Any:
    stage = cfg.stages[index]
    try:
        merged = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(stage.overrides)))
    except Exception as exc:  # OmegaConf names the bad key in its message
        raise ConfigError(
            f"stages[{index}] ({stage.name}): bad override in {list(stage.overrides)}: {exc}"
        ) from exc
    merged.stages = []
    merged.trainer.max_steps = stage.max_steps
    merged.run.dir = str(stage_dir(Path(cfg.run.dir), index, stage.name))
    merged.run.resume = "force" if cfg.run.resume == "force" else "auto"  # force reaches every stage
    merged.lora.init_from = str(previous) if previous is not None else cfg.lora.init_from
    return merged


def validate_stages(cfg: Any) -> None:
    """Every stage's config as it will train (the command line with the stage's overrides), checked
    before the first stage trains: a bad override in stage 4 must not wait for stages 1-3 to finish.
    The error names the stage."""
    for index, stage in enumerate(cfg.stages):
        try:
            validate_config(stage_config(cfg, index, None))
        except ConfigError as exc:
            if str(exc).startswith(f"stages[{index}]"):
                raise
            raise ConfigError(f"stages[{index}] ({stage.name}): {exc}") from exc


def run_curriculum(cfg: Any, train_one: Any) -> Path:
    """Run every stage (skipping finished ones); returns the final LoRA file. `train_one(stage_cfg)`
    trains one stage and returns its FitResult (training/train.py), which says whether this process is
    rank 0: only rank 0 writes the curriculum's own files."""
    run_dir = Path(cfg.run.dir)
    is_global_zero = _launched_as_rank_zero()
    names = [s.name for s in cfg.stages]
    if len(set(names)) != len(names):
        raise ValueError(f"stages: names must be unique, got {names}")
    if len(names) > 1 or cfg.lora.init_from:
        # Before the first stage trains: stage 2 would otherwise fail only after stage 1 finished.
        check_warm_start_supported(
            ParallelDims.from_config(cfg.parallel), "stages (each stage warm-starts from the previous)"
        )
    previous: Path | None = None
    final_lora: Path | None = None
    summary = []
    for i, stage in enumerate(cfg.stages):
        sdir = stage_dir(run_dir, i, stage.name)
        done = sdir / STAGE_DONE
        if done.is_file():
            # Finished with the same settings? (A changed stage's data or LoRA must not be skipped silently.)
            check_finished_run(stage_config(cfg, i, previous), new_run_flag(cfg.run))
            log.info("stage %d/%d %s: already complete, skipping", i + 1, len(cfg.stages), stage.name)
        else:
            log.info("stage %d/%d %s: %d steps", i + 1, len(cfg.stages), stage.name, stage.max_steps)
            is_global_zero = train_one(stage_config(cfg, i, previous)).is_global_zero
            if is_global_zero:
                write_json_atomic(done, {"stage": stage.name, "max_steps": stage.max_steps})
        found = complete_checkpoints(sdir)
        if not found or found[-1][0] != stage.max_steps:
            raise RuntimeError(
                f"stage {stage.name} finished without a checkpoint at step {stage.max_steps} in {sdir}"
            )
        previous = found[-1][1]
        final_lora = lora_path(sdir, stage.max_steps)
        summary.append(
            {
                "stage": stage.name,
                "dir": str(sdir),
                "max_steps": stage.max_steps,
                "overrides": list(stage.overrides),
                "lora": str(final_lora),
            }
        )
    assert final_lora is not None
    out = lora_dir(run_dir) / f"lora_weights_{cfg.stages[-1].name}_final.safetensors"
    if is_global_zero:
        with atomic_file(out) as tmp:
            shutil.copyfile(final_lora, tmp)
        write_json_atomic(run_dir / "curriculum.json", {"stages": summary, "final_lora": str(out)})
    return out


def _launched_as_rank_zero() -> bool:
    """Before a stage has trained there is no process group yet: ask the cluster environment Lightning
    would use (torchrun, SLURM) which rank this process was started as; a plain process is rank 0."""
    import torch.distributed as dist
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    for env in (TorchElasticEnvironment, SLURMEnvironment):  # Lightning's order of precedence
        if env.detect():
            return env().global_rank() == 0
    return True
