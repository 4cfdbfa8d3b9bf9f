"""`ltxdist-train [hydra overrides]`: the training entry point (a thin Hydra app over `train(cfg)`)."""

from __future__ import annotations

import logging
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
from lightning.pytorch.plugins.io import CheckpointIO
from omegaconf import DictConfig, OmegaConf

from ltxdist.config.schema import validate_config
from ltxdist.config.store import CONF_DIR, register_configs
from ltxdist.data.compat import check_data_fits_checkpoint
from ltxdist.parallel import lightning_strategy
from ltxdist.tracking.metrics import TrainingMetrics
from ltxdist.training.callbacks import CheckpointAndExport, MetricsJsonl, StepProgressBar
from ltxdist.training.checkpointing import check_warm_start_supported
from ltxdist.training.datamodule import CachedLatentDataModule
from ltxdist.training.module import SIGMA_BUCKET_EDGES, LTXLoRAModule
from ltxdist.training.run_dir import lora_path

log = logging.getLogger("ltxdist")


def _prepare_inputs(cfg: Any) -> None:
    """Demo conveniences: a tiny checkpoint and synthetic data when asked for and missing."""
    ckpt = Path(cfg.model.checkpoint)
    if not ckpt.is_file() and cfg.model.create_if_missing:
        from ltxdist.models.tiny_checkpoint import write_random_checkpoint

        if cfg.model.name != "tiny":
            raise ValueError(
                f"model.create_if_missing only writes tiny checkpoints, not model={cfg.model.name}"
            )
        write_random_checkpoint(ckpt)
        log.info("wrote tiny checkpoint %s", ckpt)
    if cfg.data.path is None or not cfg.data.synthetic_if_missing:
        return
    data = Path(cfg.data.path)
    if not (data / "index.json").is_file():
        from ltxdist.data.synthetic import write_synthetic_dataset

        write_synthetic_dataset(
            data,
            ckpt,
            num_samples=cfg.data.synthetic_num_samples,
            buckets=tuple(cfg.data.synthetic_buckets),
            seed=cfg.run.seed,
            reference_video_downscale=cfg.data.synthetic_reference_video_downscale,
            reference_audio_frames=cfg.data.synthetic_reference_audio_frames,
        )
        log.info("wrote synthetic dataset %s", data)


def lora_extra_metadata(strategy_cfg: Any) -> dict[str, Any]:
    """Strategy facts that inference needs from the LoRA file (ComfyUI and ltx-pipelines read the IC-LoRA
    reference downscale factor from its metadata)."""
    if strategy_cfg.name == "video_to_video":
        return {"reference_downscale_factor": str(strategy_cfg.reference_downscale_factor)}
    if strategy_cfg.name == "audio_ref_only_ic":
        return {
            "use_negative_ref_positions": str(strategy_cfg.use_negative_ref_positions).lower(),
            "mask_video_to_ref_audio": str(strategy_cfg.mask_video_to_ref_audio).lower(),
            "mask_ref_audio_to_text": str(strategy_cfg.mask_ref_audio_to_text).lower(),
        }
    return {}


class _NoLightningCheckpoints(CheckpointIO):
    """Lightning never writes or reads a checkpoint in an ltxdist run (ltxdist.checkpoint does, without
    pickle); should a Lightning code path try, it fails instead of writing a torch.save file."""

    def save_checkpoint(self, checkpoint: Any, path: Any, storage_options: Any = None) -> None:
        raise RuntimeError(f"Lightning tried to write a checkpoint to {path}; ltxdist writes its own")

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: Any = None) -> Any:
        raise RuntimeError(f"Lightning tried to read checkpoint {path}; ltxdist reads its own")

    def remove_checkpoint(self, path: Any) -> None:
        raise RuntimeError(f"Lightning tried to remove checkpoint {path}")


def build_trainer(cfg: Any, run_dir: Path, callbacks: list[pl.Callback], logger: Any) -> pl.Trainer:
    p = cfg.parallel
    return pl.Trainer(
        accelerator=p.accelerator,
        devices=p.devices,
        num_nodes=p.num_nodes,
        strategy=lightning_strategy(p),
        precision="32-true",  # dtypes are explicit: frozen base in model.dtype, adapters in lora.dtype
        max_steps=cfg.trainer.max_steps,
        max_epochs=-1,
        accumulate_grad_batches=cfg.trainer.accumulate_grad_batches,
        gradient_clip_val=cfg.trainer.gradient_clip_val,
        log_every_n_steps=cfg.trainer.log_every_n_steps,
        enable_progress_bar=False,  # StepProgressBar counts optimizer steps instead of epochs
        enable_checkpointing=False,  # CheckpointAndExport owns checkpoints
        enable_model_summary=False,
        deterministic=cfg.trainer.deterministic,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=str(run_dir),
        plugins=[_NoLightningCheckpoints()],
        callbacks=callbacks,
        logger=logger if logger is not None else False,
        use_distributed_sampler=False,  # the stream splits data by rank itself
    )


class LaunchError(ValueError):
    """Several processes were asked for but nothing started them; the message has the command."""


def check_launched(trainer: pl.Trainer, cfg: Any) -> None:
    """parallel.devices x parallel.num_nodes > 1 needs its processes started by torchrun (launch/train.sh)
    or SLURM. Lightning would otherwise re-run this script for the other ranks itself, which does not
    combine with Hydra's run directory, curricula or ltxdist's signal handling: refuse, with the command."""
    world = cfg.parallel.devices * cfg.parallel.num_nodes
    env = getattr(trainer.strategy, "cluster_environment", None)
    if world == 1 or (env is not None and env.creates_processes_externally):
        return
    args = " ".join(
        shlex.quote(a)
        for a in _command_overrides()
        if not a.startswith(("parallel.devices=", "parallel.num_nodes="))
    )
    if cfg.parallel.num_nodes > 1:
        how = f"sbatch --nodes={cfg.parallel.num_nodes} slurm/train_multinode.sbatch {args}"
    else:
        how = (
            f"NPROC={cfg.parallel.devices} launch/train.sh {args}\n  (or: torchrun --standalone "
            f"--nproc_per_node {cfg.parallel.devices} -m ltxdist.training.train {args} "
            f"parallel.devices={cfg.parallel.devices})"
        )
    raise LaunchError(
        f"parallel.devices={cfg.parallel.devices} x parallel.num_nodes={cfg.parallel.num_nodes} asks for "
        f"{world} processes, but this is one process that nothing else started. Start them with "
        f"torchrun:\n  {how}"
    )


def _command_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:  # not started through Hydra's main (a test calling train(cfg))
        return ["<your overrides>"]


class RunPreparation(pl.Callback):
    """Rank 0's duties before any model is built: demo inputs, config.yaml, the data/model check. At
    `setup`, where the process group exists and `trainer.is_global_zero` comes from it (no environment
    variable read); the other ranks wait there, and fail with rank 0 if it fails."""

    def __init__(self, cfg: Any, run_dir: Path, resolved: Any):
        self.cfg, self.run_dir, self.resolved = cfg, run_dir, resolved

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        failure: Exception | None = None
        if trainer.is_global_zero:
            try:
                _prepare_inputs(self.cfg)
                (self.run_dir / "config.yaml").write_text(OmegaConf.to_yaml(self.resolved))
                check_data_fits_checkpoint(self.cfg.data, self.cfg.model.checkpoint)  # before any model
            except Exception as exc:  # raised below, once the other ranks know
                failure = exc
        message = trainer.strategy.broadcast(
            None if failure is None else f"{type(failure).__name__}: {failure}"
        )
        if failure is not None:
            raise failure
        if message is not None:
            raise RuntimeError(f"rank 0 could not prepare the run: {message}")


@dataclass(frozen=True)
class FitResult:
    lora: Path  # the final LoRA file
    is_global_zero: bool  # this process is rank 0 (as its process group says)


def train(cfg: Any) -> Path:
    """Train from a composed config; returns the path of the final LoRA file."""
    validate_config(cfg)
    if cfg.stages:
        from ltxdist.training.curriculum import run_curriculum

        return run_curriculum(cfg, _validated_fit)
    return fit(cfg).lora


def _validated_fit(stage_cfg: Any) -> FitResult:
    validate_config(stage_cfg)  # a stage's overrides are checked like a command line's
    return fit(stage_cfg)


def fit(cfg: Any) -> FitResult:
    """One training run (a curriculum runs one per stage)."""
    run_dir = Path(cfg.run.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    pl.seed_everything(cfg.run.seed, workers=True, verbose=False)

    module = LTXLoRAModule(cfg)
    if cfg.lora.init_from:
        check_warm_start_supported(module.dims, f"lora.init_from={cfg.lora.init_from}")  # before any work
    datamodule = CachedLatentDataModule(cfg.data, seed=cfg.run.seed)
    # Metrics before checkpoints: a step's metrics line exists before its checkpoint does, so a run
    # killed right after checkpoint N and resumed from it has no gap in metrics.jsonl.
    # TrainingMetrics first (it closes each step's timer) and its boundary marker last (see metrics.py).
    metrics = TrainingMetrics(
        bucket_edges=SIGMA_BUCKET_EDGES, activation_checkpointing=cfg.model.gradient_checkpointing
    )
    callbacks: list[pl.Callback] = [
        RunPreparation(cfg, run_dir, resolved),
        metrics,
        MetricsJsonl(run_dir / "metrics.jsonl", metrics=metrics),
        CheckpointAndExport(
            run_dir,
            cfg.trainer.checkpoint_every_n_steps,
            cfg.trainer.keep_last_k,
            strategy_name=cfg.strategy.name,
            extra_metadata=lora_extra_metadata(cfg.strategy),
            resume=cfg.run.resume,
            init_from=cfg.lora.init_from,
        ),
    ]
    if cfg.trainer.progress_bar:
        callbacks.append(StepProgressBar())
    if cfg.validation.name != "none":
        from ltxdist.training.validation import ValidationSampling

        callbacks.append(
            ValidationSampling(
                cfg.validation,
                run_dir=run_dir,
                model_checkpoint=cfg.model.checkpoint,
                strategy_cfg=cfg.strategy,
                lockstep=module.dims.lockstep_forward,
            )
        )
    logger = None
    if cfg.logger.name == "wandb":
        from ltxdist.tracking.wandb_setup import WandbLoRAArtifacts, build_wandb_logger

        logger = build_wandb_logger(cfg.logger, run_dir, cfg.run.name, resolved)
        callbacks.append(WandbLoRAArtifacts(run_dir, cfg.run.name))  # after CheckpointAndExport
    callbacks.append(metrics.boundary)
    trainer = build_trainer(cfg, run_dir, callbacks, logger)
    check_launched(trainer, cfg)
    trainer.fit(module, datamodule=datamodule)
    if logger is not None and trainer.is_global_zero:
        logger.experiment.finish()  # flush metrics, videos and LoRA artifacts now, not at interpreter exit
    final = lora_path(run_dir, trainer.global_step)
    if trainer.is_global_zero:
        log.info("final LoRA: %s", final)
    return FitResult(lora=final, is_global_zero=trainer.is_global_zero)


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        train(cfg)
    except LaunchError as err:
        sys.exit(f"error: {err}")  # the command to use, without a traceback


def main() -> None:
    register_configs()
    try:
        _hydra_main()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
