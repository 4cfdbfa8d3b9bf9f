"""`ltxdist-train [hydra overrides]`: the training entry point (a thin Hydra app over `train(cfg)`)."""

from __future__ import annotations

import logging
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import hydra
import lightning.pytorch as pl
import torch
from lightning.pytorch.plugins.io import CheckpointIO
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ltxdist.checkpoint.files import CheckpointMismatchError
from ltxdist.config.hydra_errors import explain_read_error
from ltxdist.config.schema import ConfigError, validate_config
from ltxdist.config.store import CONF_DIR, compose_train_config, register_configs
from ltxdist.data.compat import (
    check_data_fits_checkpoint,
    check_data_fits_strategy,
    warn_about_older_preparations,
)
from ltxdist.models.checkpoint_file import CheckpointInfo
from ltxdist.models.loader import MetaBase
from ltxdist.parallel import lightning_strategy
from ltxdist.quant.base import base_precision_metadata
from ltxdist.tracking.metrics import TrainingMetrics
from ltxdist.training.callbacks import CheckpointAndExport, MetricsJsonl
from ltxdist.training.checkpointing import (
    NEWEST_CHECKPOINT_MODES,
    ResumePlan,
    check_warm_start_supported,
    resume_candidates,
)
from ltxdist.training.console import (
    ProgressReporter,
    end_summary,
    hydra_overrides,
    quiet_third_party,
    resume_command,
    startup_summary,
)
from ltxdist.training.datamodule import CachedLatentDataModule
from ltxdist.training.module import SIGMA_BUCKET_EDGES, LTXLoRAModule
from ltxdist.training.run_dir import (
    abandon_later_steps,
    complete_checkpoints,
    lora_dir,
    lora_path,
    remove_partial_files,
)
from ltxdist.training.run_identity import (
    IDENTITY_KEY,
    LoRAShapeMismatchError,
    ResumeRefusedError,
    compute_run_identity,
    decide_resume,
    identity_in_state,
    new_run_flag,
    record_forced_resume,
    schedule_length_change,
)

log = logging.getLogger("ltxdist")


def _prepare_inputs(cfg: Any) -> None:
    """Demo conveniences: a tiny checkpoint and synthetic data when asked for and missing; with
    data=synthetic, refuses prepared shards and new random data for a real model (a forgotten data=shards)."""
    ckpt = Path(cfg.model.checkpoint)
    # Options of model=tiny and data=synthetic only (the closed config has them nowhere else).
    if not ckpt.is_file() and not cfg.model.get("create_if_missing", False):
        # Never a new random checkpoint as a side effect of a mistyped path (only the demo asks for one).
        raise ConfigError(
            f"model.checkpoint: {ckpt} does not exist; point model.checkpoint at the LTX-2.3 .safetensors "
            f"file (a tiny random one for trying things out: `ltxdist-tiny-checkpoint {ckpt.parent}`)"
        )
    if not ckpt.is_file():
        from ltxdist.models.tiny_checkpoint import write_random_checkpoint

        write_random_checkpoint(ckpt)
        log.info("model.create_if_missing: wrote a tiny random checkpoint %s", ckpt)
    if "synthetic_if_missing" not in cfg.data:  # data=shards
        return
    for path in [cfg.data.path, *(m.path for m in cfg.data.mix)]:
        if path is not None:
            _refuse_prepared_shards_as_synthetic(Path(path))
    if cfg.data.path is None or not cfg.data.synthetic_if_missing:
        return
    data = Path(cfg.data.path)
    if not (data / "index.json").is_file():
        _refuse_random_data_for_a_real_model(data, cfg.model.name)
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


_ADD_DATA_SHARDS = "add data=shards to the command (data=synthetic is the default data group)"


def _refuse_prepared_shards_as_synthetic(data: Path) -> None:
    """Shards from ltxdist-prepare under data=synthetic would train with the synthetic group's demo
    settings (batch_size 2, num_workers 0, shuffle_buffer 16): almost always a forgotten data=shards."""
    import json

    try:
        index = json.loads((data / "index.json").read_text())
    except (OSError, ValueError):
        return  # no readable index: nothing prepared here (the data stream reports a broken one)
    if isinstance(index, dict) and not index.get("synthetic", False):
        raise ConfigError(
            f"data.path: {data} holds prepared (not synthetic) shards, but the data group is data=synthetic, "
            f"whose demo settings would apply: {_ADD_DATA_SHARDS}"
        )


def _refuse_random_data_for_a_real_model(data: Path, model_name: str) -> None:
    """Never random latents written and trained on because data.path is mistyped or empty (as for
    model.checkpoint): only the tiny model, or the group's own default folder, gets new synthetic data."""
    default = OmegaConf.load(CONF_DIR / "data" / "synthetic.yaml").path
    if model_name == "tiny" or Path(data) == Path(default):
        return
    raise ConfigError(
        f"data.path: {data} holds no shards (no index.json), and data=synthetic would write random "
        f"synthetic latents there and train model={model_name} on them; point data.path at the output of "
        f"ltxdist-prepare and {_ADD_DATA_SHARDS}"
    )


def check_lora_targets(lora_cfg: Any, model: torch.nn.Module) -> None:
    """lora.targets resolved on the meta model `model` (no memory; only looked at) before the run folder
    is written to: a pattern that matches no Linear is a config mistake, reported in one line rather
    than from inside the fit."""
    from ltxdist.lora.targets import resolve_target_modules

    blocks = list(lora_cfg.blocks) if lora_cfg.blocks else None
    count = len(model.transformer_blocks)
    outside = [b for b in blocks or [] if not 0 <= b < count]
    if outside:
        raise ConfigError(f"lora.blocks: {outside} are not blocks of this model (it has 0-{count - 1})")
    try:
        resolve_target_modules(model, list(lora_cfg.targets), blocks)
    except ValueError as err:
        raise ConfigError(str(err)) from err


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
            "identity_guidance_scale": str(float(strategy_cfg.identity_guidance_scale)),
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
        enable_progress_bar=False,  # ProgressReporter counts optimizer steps instead of epochs
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
    overrides = hydra_overrides()
    args = " ".join(
        shlex.quote(a)
        for a in (["<your overrides>"] if overrides is None else overrides)
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


class RunPreparation(pl.Callback):
    """Rank 0's duties before any model is built: demo inputs, the data/model check, the resume decision
    and config.yaml. At `setup`, where the process group exists and `trainer.is_global_zero` comes from it
    (no environment variable read); the other ranks wait there, and fail with rank 0 if it fails. The
    base checkpoint's header is read and its meta model built once, in `base` (which the module's
    configure_model shares); the chosen checkpoint's train_state.json is read once (by load_newest).

    The resume decision (training/run_identity.py): `run.resume=auto` continues the newest checkpoint
    only if it records the same run; it is decided before anything in the run folder changes
    (config.yaml is written after it), and the identity goes into `checkpoint_extra`, which
    CheckpointAndExport stores in every checkpoint's train state.

    The checkpoint checked is the one loaded: it is chosen here as the newest that reads (meta.json,
    every file's size, train_state.json, tensor headers; a damaged one is named and the previous one
    taken under auto / must / force, an old format fails with its convert command) and handed to
    CheckpointAndExport through `resume_plan`. Resuming at a step below later checkpoints of the folder
    (an explicit older checkpoint, a damaged newest one) moves those aside into RUN/abandoned/
    (run_dir.abandon_later_steps): nothing is deleted and no later auto-resume continues them."""

    def __init__(
        self,
        cfg: Any,
        run_dir: Path,
        resolved: Any,
        checkpoint_extra: dict[str, Any],
        resume_plan: ResumePlan | None = None,
        base: MetaBase | None = None,
    ):
        self.cfg, self.run_dir, self.resolved = cfg, run_dir, resolved
        self.checkpoint_extra = checkpoint_extra
        self.resume_plan = resume_plan if resume_plan is not None else ResumePlan()
        self.base = base if base is not None else MetaBase(cfg.model.checkpoint)

    def _decide_resume(self, checkpoint_info: CheckpointInfo) -> None:
        from ltxdist.checkpoint import check_checkpoint, load_newest

        cfg = self.cfg
        mode = cfg.run.resume
        remove_partial_files(self.run_dir)  # what a killed writer left is not a checkpoint
        if mode == "never":
            refuse_to_start_over(self.run_dir, new_run_flag(cfg.run))
        candidates = resume_candidates(self.run_dir, mode)
        chosen, state = None, None
        if candidates:
            chosen, state = load_newest(
                candidates, check_checkpoint, fall_back=mode in NEWEST_CHECKPOINT_MODES
            )
        identity = compute_run_identity(cfg, checkpoint_info=checkpoint_info)
        # The chosen checkpoint's identity, type-checked by identity_in_state, from the train state
        # load_newest read: that file is not read again here.
        saved = identity_in_state(state) if state is not None else None
        decision = decide_resume(chosen, mode, identity, new_run_flag(cfg.run), saved=saved)
        forced = record_forced_resume(identity, decision, mode)
        if forced:
            log.warning(forced)
        if decision.unrecorded:
            log.warning("%s records no run settings: not checked", chosen)
        elif state is not None:
            longer = schedule_length_change(saved, cfg, state.step)
            if longer:
                log.warning(longer)
        if state is not None:
            abandon_later_steps(self.run_dir, state.step)  # after every refusal: those change nothing
        log.info(startup_summary(cfg, identity, decision.describe()))
        self.checkpoint_extra[IDENTITY_KEY] = identity
        self.resume_plan.checkpoint, self.resume_plan.decided = chosen, True
        self.resume_plan.forced = decision.forced

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        failure: Exception | None = None
        if trainer.is_global_zero:
            try:
                _prepare_inputs(self.cfg)
                info = self.base.info  # the header, read once (after _prepare_inputs may write the file)
                check_data_fits_checkpoint(self.cfg.data, info)  # before any model
                check_data_fits_strategy(self.cfg.data, self.cfg.strategy)
                warn_about_older_preparations(self.cfg.data)  # usable data: a warning, not a refusal
                check_lora_targets(self.cfg.lora, self.base.model())  # the meta model configure_model takes
                self._decide_resume(info)
                (self.run_dir / "config.yaml").write_text(OmegaConf.to_yaml(self.resolved))
            except Exception as exc:  # raised below, once the other ranks know
                failure = exc
        message = trainer.strategy.broadcast(
            None if failure is None else f"{type(failure).__name__}: {failure}"
        )
        if failure is not None:
            raise failure
        if message is not None:
            raise RuntimeError(f"rank 0 could not prepare the run: {message}")


def refuse_to_start_over(run_dir: Path, new_run: str) -> None:
    """run.resume=never in a folder that already holds a run's checkpoints or LoRA files: starting over
    there would let keep-last-k and metrics.jsonl mix the two runs (and lose the older one's files), so
    refuse, naming the folder and the flag that gives the new run a folder of its own."""
    steps = [s for s, _ in complete_checkpoints(run_dir)]
    loras = sorted(lora_dir(run_dir).glob("*.safetensors")) if lora_dir(run_dir).is_dir() else []
    if not steps and not loras:
        return
    held = f"checkpoints of steps {steps}" if steps else f"{len(loras)} LoRA file(s) in {lora_dir(run_dir)}"
    raise ResumeRefusedError(
        f"run.resume=never: {run_dir} already holds a run ({held}); starting over in it would mix the two "
        f"runs and lose the older one's files. Start the new run in a folder of its own: add {new_run}; "
        f"or continue the existing run with run.resume=auto, or move {run_dir} away yourself"
    )


@dataclass(frozen=True)
class FitResult:
    lora: Path  # the final LoRA file
    is_global_zero: bool  # this process is rank 0 (as its process group says)


def train(cfg: Any) -> Path:
    """Train from a composed config; returns the path of the final LoRA file."""
    validate_config(cfg)
    if cfg.stages:
        from ltxdist.training.curriculum import run_curriculum, validate_stages

        validate_stages(cfg)  # every stage, before the first one trains
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

    # model.checkpoint's header and meta model: rank 0's start-up checks and configure_model share them.
    base = MetaBase(cfg.model.checkpoint)
    module = LTXLoRAModule(cfg, base)
    if cfg.lora.init_from:
        check_warm_start_supported(module.dims, f"lora.init_from={cfg.lora.init_from}")  # before any work
    datamodule = CachedLatentDataModule(cfg.data, seed=cfg.run.seed)
    # Metrics before checkpoints: a step's metrics line exists before its checkpoint does, so a run
    # killed right after checkpoint N and resumed from it has no gap in metrics.jsonl.
    # TrainingMetrics first (it closes each step's timer) and its boundary marker last (see metrics.py).
    # What each step recomputes (HFU) is read from the model: the resolved parallel.activation_checkpointing
    # plan (off / full / attention / every_k / budget), not model.gradient_checkpointing alone.
    metrics = TrainingMetrics(bucket_edges=SIGMA_BUCKET_EDGES)
    checkpoint_extra: dict[str, Any] = {}  # the run identity, filled in by RunPreparation (rank 0)
    resume_plan = ResumePlan()  # the checkpoint RunPreparation chose (rank 0), loaded by CheckpointAndExport
    callbacks: list[pl.Callback] = [
        RunPreparation(cfg, run_dir, resolved, checkpoint_extra, resume_plan, base),
        metrics,
        MetricsJsonl(run_dir / "metrics.jsonl", metrics=metrics),
        CheckpointAndExport(
            run_dir,
            cfg.trainer.checkpoint_every_n_steps,
            cfg.trainer.keep_last_k,
            strategy_name=cfg.strategy.name,
            extra_metadata={**lora_extra_metadata(cfg.strategy), **base_precision_metadata(cfg.model)},
            step_metrics=metrics,
            resume_command=resume_command(),
            resume=cfg.run.resume,
            init_from=cfg.lora.init_from,
            extra=checkpoint_extra,
            resume_plan=resume_plan,
        ),
    ]
    progress = ProgressReporter(metrics, show=cfg.trainer.progress_bar)
    callbacks.append(progress)
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
        block_list = getattr(module.transformer, "transformer_blocks", None)
        blocks = None if block_list is None else len(block_list)
        summary = end_summary(
            run_dir,
            final,
            trainer.global_step,
            progress,
            cfg.trainer.max_steps,
            checkpoint=str(cfg.model.checkpoint),
            num_blocks=blocks,
        )
        log.info(summary)
    return FitResult(lora=final, is_global_zero=trainer.is_global_zero)


def _exit_on_config_error(err: ConfigError | OmegaConfBaseException) -> NoReturn:
    """A config mistake: one line naming the key (no traceback), exit status 2 (a usage error)."""
    if isinstance(err, OmegaConfBaseException):  # a value read after composing (`???`, `${...}`)
        err = explain_read_error(err)
    print(f"ltxdist-train: config error: {err}", file=sys.stderr)
    sys.exit(2)


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        validate_config(cfg)  # train() validates too (and each curriculum stage's config)
    except (ConfigError, OmegaConfBaseException) as err:
        _exit_on_config_error(err)
    try:
        train(cfg)
    except ConfigError as err:
        _exit_on_config_error(err)
    except LaunchError as err:
        sys.exit(f"error: {err}")  # the command to use, without a traceback
    except (ResumeRefusedError, LoRAShapeMismatchError, CheckpointMismatchError) as exc:
        # The message is the whole story (what differs, how to go on): no traceback around it.
        log.error("%s", exc)
        sys.exit(2)


def main() -> None:
    quiet_third_party()
    register_configs()
    overrides = sys.argv[1:]
    if not any(arg.startswith("-") for arg in overrides):
        # Compose and check once here to report a mistake in one line: inside the Hydra app, Hydra
        # prints its own multi-line message. (Hydra's flags, e.g. --multirun or --cfg, go to Hydra.)
        try:
            validate_config(compose_train_config(overrides))
        except (ConfigError, OmegaConfBaseException) as err:
            _exit_on_config_error(err)
    try:
        _hydra_main()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
