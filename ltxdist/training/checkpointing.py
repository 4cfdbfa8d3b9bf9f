"""A Lightning run's checkpoints through ltxdist.checkpoint: what the train state holds (step, data
position, counters, LR scheduler, loop progress, layout) and putting it back, around the trainable
tensors (adapters + optimizer state) the checkpoint package reads and writes.

Lightning's own checkpointing (`trainer.save_checkpoint`, `ckpt_path=`) is not used: it would pickle,
and the trainable state must be read under the current layout, after the optimizer exists. The restore
runs at `on_fit_start` (CheckpointAndExport): after the strategy has set up the model and optimizer,
before the DataLoader is built (it starts at the restored data position), at the point where Lightning
itself restores loops and schedulers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from ltxdist.checkpoint import (
    TorchTrainable,
    Trainable,
    TrainState,
    collectives,
    load_checkpoint,
    load_newest,
)
from ltxdist.parallel.dims import ParallelDims
from ltxdist.training.run_dir import ResumeError, complete_checkpoints, remove_partial_files

log = logging.getLogger("ltxdist")


class WarmStartError(ValueError):
    pass


def check_warm_start_supported(dims: ParallelDims, what: str) -> None:
    """Fail before any model is built when `what` (a curriculum, or lora.init_from) would warm start
    under a layout that cannot."""
    if not dims.supports_warm_start:
        raise WarmStartError(
            f"{what} carries the LoRA and AdamW moments into a new run, which parallel={dims.name} does not "
            "support (DeepSpeed keeps them in its own partitions); use parallel=fsdp2, hsdp, ddp or single"
        )


def trainable_state(trainer: pl.Trainer, module: Any) -> Trainable:
    optimizer = trainer.optimizers[0] if trainer.optimizers else None
    if module.dims.uses_deepspeed:
        from ltxdist.checkpoint.deepspeed_state import DeepSpeedTrainable

        return DeepSpeedTrainable(module, optimizer)
    return TorchTrainable(module, optimizer)


def capture_train_state(trainer: pl.Trainer, module: Any, extra: dict[str, Any]) -> TrainState:
    schedulers = trainer.lr_scheduler_configs
    return TrainState(
        step=trainer.global_step,
        data=module.data_position(),
        counters=module.counters(),
        scheduler=schedulers[0].scheduler.state_dict() if schedulers else None,
        layout={**module.dims.as_record(), "micro_batch_size": int(module.cfg.data.batch_size)},
        loops=trainer.fit_loop.state_dict(),
        model=module.model_record(),
        extra=dict(extra),
    )


def restore_train_state(trainer: pl.Trainer, module: Any, state: TrainState, *, forced: bool = False) -> None:
    """`forced` (run.resume=force): the schedule's position comes from the checkpoint, its learning
    rates from this run's config (optim.lr and the schedule), as the forced settings say."""
    module.load_train_state(state)  # data position (converted to this layout), counters
    schedulers = trainer.lr_scheduler_configs
    if schedulers and state.scheduler is not None:
        scheduler = schedulers[0].scheduler
        if forced:
            base_lrs = [group["initial_lr"] for group in scheduler.optimizer.param_groups]
        scheduler.load_state_dict(state.scheduler)
        if forced:
            _continue_schedule_with(scheduler, base_lrs)
    if state.loops is not None:
        # Lightning's step counters (global_step, batch progress); Lightning's own restore does the same
        # at this point of fit.
        trainer.fit_loop.load_state_dict(state.loops)
        _count_micro_batches_in_this_layout(trainer, module.batches_seen)


def _count_micro_batches_in_this_layout(trainer: pl.Trainer, batches_seen: int) -> None:
    """Lightning steps the optimizer when its micro-batch count reaches a multiple of
    trainer.accumulate_grad_batches. A resume under another layout (processes, data.batch_size,
    accumulation) converts the data position into this layout's micro-batches (`batches_seen`), while
    the restored loop still counts the old layout's: every optimizer step after the resume would take a
    slipped share of the global batch. The loop's count follows the converted position, which must be
    whole optimizer steps of this layout."""
    accumulate = int(trainer.accumulate_grad_batches)
    if batches_seen % accumulate:
        raise ResumeError(
            f"the checkpoint's data position is {batches_seen} micro-batches of this layout, not whole "
            f"optimizer steps of trainer.accumulate_grad_batches={accumulate}: choose data.batch_size, the "
            "process count and trainer.accumulate_grad_batches so that one optimizer step takes as many "
            "samples as in the run that wrote it"
        )
    progress = trainer.fit_loop.epoch_loop.batch_progress
    shift = batches_seen - progress.current.ready
    if shift == 0:
        return
    for counter in (progress.total, progress.current):
        counter.ready += shift
        counter.started += shift
        counter.processed += shift
        counter.completed += shift


def _continue_schedule_with(scheduler: Any, base_lrs: list[float]) -> None:
    """Put this run's base learning rates into a scheduler restored from a checkpoint (which brought
    the old ones) and set each group's lr for the restored step, as the scheduler's own step would."""
    scheduler.base_lrs = list(base_lrs)
    if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        return  # ltxdist builds LambdaLR (training/optim.py); another scheduler sets lr at its next step
    lrs = [base * fn(scheduler.last_epoch) for base, fn in zip(base_lrs, scheduler.lr_lambdas, strict=True)]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    scheduler._last_lr = lrs  # what get_last_lr() reports (torch's own attribute)


@dataclass
class ResumePlan:
    """Rank 0's choice of checkpoint (the training entry point's RunPreparation, which checks its run
    identity before any model is built), handed to `resume`, so the checkpoint checked is the one loaded."""

    decided: bool = False
    checkpoint: Path | None = None  # None: a fresh run
    # Continued despite changed settings (run.resume=force, or an explicit checkpoint path with other
    # settings): this run's optim.* apply, as the record of the change says.
    forced: bool = False


# run.resume modes that take the newest complete checkpoint and fall back to the previous one when it does
# not load; a checkpoint path names one checkpoint (no fallback), never names none.
NEWEST_CHECKPOINT_MODES = ("auto", "must", "force")


def resume_candidates(run_dir: Path, resume: str) -> list[Path]:
    """run.resume: auto / must / force -> every complete checkpoint, oldest first (the newest that loads
    wins; force continues it with changed settings, training/run_identity.py); never -> none; a path ->
    that checkpoint alone (no fallback: it was asked for by name). Call after
    `remove_partial_files`, so a checkpoint moved aside mid-overwrite is back."""
    if resume == "never":
        return []
    if resume in NEWEST_CHECKPOINT_MODES:
        found = [path for _, path in complete_checkpoints(run_dir)]
        if not found and resume == "must":
            raise ResumeError(f"run.resume=must but {run_dir / 'checkpoints'} holds no complete checkpoint")
        return found
    from ltxdist.checkpoint import is_complete_checkpoint

    path = Path(resume)
    if not is_complete_checkpoint(path):
        raise ResumeError(f"run.resume={resume}: not a complete checkpoint directory (needs meta.json)")
    return [path]


def resume(
    trainer: pl.Trainer, module: Any, run_dir: Path, mode: str, plan: ResumePlan | None = None
) -> tuple[Path, TrainState] | None:
    """Collective: resume from the checkpoint `plan` names when rank 0 decided one (exactly that one),
    else from the newest complete checkpoint that loads (a damaged one is named and the previous one
    tried), or None for a fresh run. Rank 0 decides which checkpoints exist. A forced continuation
    (run.resume=force, or a checkpoint path with changed settings: `plan.forced`) keeps this run's
    optimizer settings (optim.*), everything else comes from the checkpoint."""
    found: list[Path] | str
    fall_back = mode in NEWEST_CHECKPOINT_MODES
    forced = mode == "force"
    if trainer.is_global_zero and plan is not None and plan.decided:
        found = [plan.checkpoint] if plan.checkpoint is not None else []
        fall_back = False  # chosen, read and identity-checked already: no other one instead
        forced = plan.forced
    elif trainer.is_global_zero:
        remove_partial_files(run_dir)  # before looking: what a killed writer left is not a checkpoint
        try:
            found = resume_candidates(run_dir, mode)
        except ResumeError as err:
            found = str(err)
    else:
        found = []
    found, fall_back, forced = collectives.broadcast((found, fall_back, forced))
    if isinstance(found, str):
        raise ResumeError(found)
    if not found:
        return None
    trainable = trainable_state(trainer, module)

    def load(path: Path) -> TrainState:
        if trainer.is_global_zero:
            log.info("resuming from %s", path)
        return load_checkpoint(path, trainable, with_train_state=True, keep_hyperparameters=forced)

    path, state = load_newest(found, load, fall_back=fall_back)
    restore_train_state(trainer, module, state, forced=forced)
    return path, state


def warm_start(trainer: pl.Trainer, module: Any, path: str | Path) -> None:
    """Collective: adapters and optimizer moments from `path`, this run's own step, schedule and
    settings kept (a resume without the train state)."""
    check_warm_start_supported(module.dims, f"lora.init_from={path}")
    if trainer.is_global_zero:
        log.info("warm start from %s", path)
    load_checkpoint(Path(path), trainable_state(trainer, module), with_train_state=False)
