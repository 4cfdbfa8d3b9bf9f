"""`ltxdist-train [hydra overrides]`: the training entry point (a thin Hydra app over `train(cfg)`)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
from omegaconf import DictConfig, OmegaConf

from ltxdist.config.schema import validate_config
from ltxdist.config.store import CONF_DIR, register_configs
from ltxdist.data.compat import check_data_fits_checkpoint
from ltxdist.parallel import lightning_strategy
from ltxdist.tracking.metrics import TrainingMetrics
from ltxdist.training.callbacks import CheckpointAndExport, MetricsJsonl, StepProgressBar
from ltxdist.training.checkpoint_io import SafetensorsCheckpointIO
from ltxdist.training.datamodule import CachedLatentDataModule
from ltxdist.training.module import SIGMA_BUCKET_EDGES, LTXLoRAModule
from ltxdist.training.run_dir import lora_path, remove_partial_files, resolve_resume

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
        plugins=[SafetensorsCheckpointIO()],
        callbacks=callbacks,
        logger=logger if logger is not None else False,
        use_distributed_sampler=False,  # the stream splits data by rank itself
    )


def train(cfg: Any) -> Path:
    """Train from a composed config; returns the path of the final LoRA file."""
    validate_config(cfg)
    if cfg.stages:
        from ltxdist.training.curriculum import run_curriculum

        return run_curriculum(cfg, train)
    run_dir = Path(cfg.run.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        _prepare_inputs(cfg)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(resolved))
        check_data_fits_checkpoint(cfg.data, cfg.model.checkpoint)  # before any model is built
    # Before choosing the checkpoint: a kill during an overwrite leaves the newest one moved aside.
    remove_partial_files(run_dir)
    resume_from = resolve_resume(run_dir, cfg.run.resume)
    if resume_from is not None and rank == 0:
        log.info("resuming from %s", resume_from)
    pl.seed_everything(cfg.run.seed, workers=True, verbose=False)

    module = LTXLoRAModule(cfg)
    datamodule = CachedLatentDataModule(
        cfg.data, seed=cfg.run.seed, sequence_parallel=cfg.parallel.sequence_parallel
    )
    # Metrics before checkpoints: a step's metrics line exists before its checkpoint does, so a run
    # killed right after checkpoint N and resumed from it has no gap in metrics.jsonl.
    # TrainingMetrics first (it closes each step's timer) and its boundary marker last (see metrics.py).
    metrics = TrainingMetrics(
        bucket_edges=SIGMA_BUCKET_EDGES, activation_checkpointing=cfg.model.gradient_checkpointing
    )
    callbacks: list[pl.Callback] = [
        metrics,
        MetricsJsonl(run_dir / "metrics.jsonl", metrics=metrics),
        CheckpointAndExport(
            run_dir,
            cfg.trainer.checkpoint_every_n_steps,
            cfg.trainer.keep_last_k,
            strategy_name=cfg.strategy.name,
            extra_metadata=lora_extra_metadata(cfg.strategy),
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
                parallel_name=cfg.parallel.name,
            )
        )
    logger = None
    if cfg.logger.name == "wandb":
        from ltxdist.tracking.wandb_setup import WandbLoRAArtifacts, build_wandb_logger

        logger = build_wandb_logger(cfg.logger, run_dir, cfg.run.name, resolved)
        callbacks.append(WandbLoRAArtifacts(run_dir, cfg.run.name))  # after CheckpointAndExport
    callbacks.append(metrics.boundary)
    trainer = build_trainer(cfg, run_dir, callbacks, logger)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume_from) if resume_from else None)
    if logger is not None and trainer.is_global_zero:
        logger.experiment.finish()  # flush metrics, videos and LoRA artifacts now, not at interpreter exit
    final = lora_path(run_dir, trainer.global_step)
    if trainer.is_global_zero:
        log.info("final LoRA: %s", final)
    return final


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    train(cfg)


def main() -> None:
    register_configs()
    try:
        _hydra_main()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
