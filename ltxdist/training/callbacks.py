"""Training callbacks: checkpoints + LoRA export with keep-last-k (also on SIGUSR1 / SIGTERM, with SLURM
requeue), and metrics.jsonl."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
import torch

from ltxdist.io import AtomicWriteError, write_bytes_atomic
from ltxdist.lora import export_lora
from ltxdist.lora.targets import expand_targets
from ltxdist.parallel.gather import gathered_lora_model, needs_gather
from ltxdist.training.run_dir import (
    checkpoint_path,
    complete_checkpoints,
    lora_path,
)

log = logging.getLogger("ltxdist")
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
LAYOUT_KEY = "ltxdist_layout"


class CheckpointAndExport(pl.Callback):
    """Every `every_n_steps` optimizer steps (and at the end): a full training-state checkpoint under
    checkpoints/step-N/, and the ComfyUI-format LoRA under lora/. Keeps the newest `keep_last_k`.

    SIGUSR1 or SIGTERM (SLURM's warning before the time limit, preemption, `kill`) on any rank: at the
    next optimizer-step boundary every rank writes the checkpoint, then the process exits with
    128 + signal; after SIGUSR1 inside a SLURM job rank 0 first requeues the job, which resumes from
    that checkpoint (run.resume=auto). The handler only sets a flag: the checkpoint is written by the
    training loop, never from inside a signal handler.
    """

    def __init__(
        self,
        run_dir: Path,
        every_n_steps: int,
        keep_last_k: int,
        strategy_name: str,
        extra_metadata: dict[str, Any] | None = None,
    ):
        self.run_dir = run_dir
        self.every_n_steps = every_n_steps
        self.keep_last_k = keep_last_k
        self.strategy_name = strategy_name
        self.extra_metadata = extra_metadata or {}
        self._last_saved_step = -1
        self._last_checked_step = -1
        self._signal = 0  # signal number received by this process, 0 = none
        self._previous_handlers: dict[int, Any] = {}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step == self._last_checked_step:
            return  # inside gradient accumulation: state is only consistent at optimizer-step boundaries
        self._last_checked_step = step
        if step > 0 and step % self.every_n_steps == 0 and step != self._last_saved_step:
            self.save(trainer, pl_module)
        received = self._signal_on_any_rank(trainer)
        if received:
            self._stop_on_signal(trainer, pl_module, received)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_signal_handlers()
        if trainer.global_step != self._last_saved_step:
            self.save(trainer, pl_module)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._restore_signal_handlers()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Early, so a signal that arrives while the (22B) model loads is remembered, not lost.
        self._install_signal_handlers()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A resumed run must not rewrite the checkpoint it started from.
        self._last_saved_step = trainer.global_step
        self._last_checked_step = trainer.global_step
        # Again: Lightning installed its own SIGTERM handler in between.
        self._install_signal_handlers()

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # The layout the data position (micro-batches per rank) refers to, so a run resumed on another
        # number of processes can convert it (LTXLoRAModule.on_load_checkpoint).
        checkpoint[LAYOUT_KEY] = {
            # data-parallel processes (a sequence-parallel group reads one share of the data)
            "world_size": trainer.world_size // int(pl_module.cfg.parallel.sequence_parallel),
            "micro_batch_size": int(pl_module.cfg.data.batch_size),
        }

    # -- signals -----------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self._previous_handlers:
            # Training is over, but Lightning's teardown re-installed this handler (it was current
            # when Lightning saved "the original"): behave as if it were not there.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self._signal = max(self._signal, int(signum))

    def _install_signal_handlers(self) -> None:
        # Replaces Lightning's SIGTERM handling (it broadcasts from inside the handler and stops
        # without a checkpoint) and its SLURM SIGUSR1 handler (a torch.save'd "hpc" checkpoint).
        for sig in STOP_SIGNALS:
            try:
                previous = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread (e.g. an interactive runner): no signal handling
                return
            self._previous_handlers.setdefault(sig, previous)  # the first one: restored at the end

    def _restore_signal_handlers(self) -> None:
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous_handlers = {}

    def _signal_on_any_rank(self, trainer: pl.Trainer) -> int:
        """The strongest signal any rank received (SIGTERM > SIGUSR1), 0 if none. One tiny all-reduce
        per optimizer step (a host sync on GPU): all ranks must stop at the same step."""
        code = torch.tensor([self._signal], device=trainer.strategy.root_device)
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(code, op=torch.distributed.ReduceOp.MAX)
        return int(code.item())

    def _stop_on_signal(self, trainer: pl.Trainer, pl_module: Any, signum: int) -> None:
        step = trainer.global_step
        if step != self._last_saved_step:
            self.save(trainer, pl_module)
        name = signal.Signals(signum).name
        if trainer.is_global_zero:
            log.warning("%s received: checkpoint for step %d written; stopping", name, step)
            if signum == signal.SIGUSR1:
                _requeue_slurm_job()
        self._restore_signal_handlers()
        # Unwinds through Lightning's interrupt handling (teardown on every rank); 128 + signal is the
        # status a process killed by that signal would have had.
        raise SystemExit(128 + signum)

    def save(self, trainer: pl.Trainer, pl_module: Any) -> None:
        """Collective: the LoRA file, then the checkpoint, then keep-last-k.

        The LoRA file comes first, so a complete checkpoint always has its LoRA file (a resumed run does
        not write that step again), while a LoRA file whose checkpoint never completed is rewritten
        identically when the resumed run reaches its step. A failed write (full disk) fails on every
        rank together with an error naming the path, rather than leaving the other ranks waiting in the
        next collective; the previous complete checkpoint is untouched. (FSDP2 writes one shard file per
        rank inside its own collective save: a rank whose write fails stops there, and the others fail
        after parallel.collective_timeout_s.)"""
        step = trainer.global_step
        # Sharded adapters (FSDP2, ZeRO) are gathered by every rank together; rank 0 writes the file.
        export_model = (
            gathered_lora_model(pl_module.transformer) if needs_gather(pl_module.transformer) else None
        )
        failure: OSError | None = None
        if trainer.is_global_zero:
            try:
                export_lora(
                    export_model if export_model is not None else pl_module.transformer,
                    lora_path(self.run_dir, step),
                    base_model_version=pl_module.model_version,
                    training_strategy=self.strategy_name,
                    step=step,
                    target_modules=expand_targets(list(pl_module.cfg.lora.targets)),
                    extra_metadata=self.extra_metadata,
                )
            except OSError as exc:
                failure = exc
        _fail_together(trainer, failure, lora_path(self.run_dir, step))
        path = checkpoint_path(self.run_dir, step)
        try:
            trainer.save_checkpoint(path, weights_only=False)  # all ranks call
        except OSError as exc:
            if pl_module.cfg.parallel.name == "fsdp2" or trainer.world_size == 1:
                raise
            # Rank 0 alone writes (single, DDP, DeepSpeed) and failed before the barrier that ends
            # Trainer.save_checkpoint, where the other ranks wait: meet them there.
            failure = exc
            trainer.strategy.barrier("Trainer.save_checkpoint")
        _fail_together(trainer, failure, path)
        if trainer.is_global_zero:
            for _, old in complete_checkpoints(self.run_dir)[: -self.keep_last_k]:
                trainer.strategy.checkpoint_io.remove_checkpoint(old)
        trainer.strategy.barrier("ltxdist-checkpoint")
        self._last_saved_step = step


def _fail_together(trainer: pl.Trainer, failure: OSError | None, path: Path) -> None:
    """Raise on every rank if a write failed on any (one all-reduce when distributed)."""
    failed = torch.tensor([int(failure is not None)], device=trainer.strategy.root_device)
    if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(failed, op=torch.distributed.ReduceOp.MAX)
    if failure is not None:
        raise failure
    if int(failed.item()):
        raise AtomicWriteError(errno.EIO, path, "another rank failed to write it (see its error)")


def _requeue_slurm_job() -> None:
    """`scontrol requeue` this job (SLURM then stops it and queues it again); outside SLURM, nothing."""
    array_job, array_task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job = f"{array_job}_{array_task}" if array_job and array_task else os.environ.get("SLURM_JOB_ID")
    if not job:
        log.info("SIGUSR1 outside a SLURM job: not requeueing")
        return
    result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if result.returncode == 0:
        log.warning("requeued SLURM job %s; it resumes from the newest checkpoint", job)
    else:
        log.error("scontrol requeue %s failed (%s): resubmit the job to resume", job, result.stderr.strip())


class MetricsJsonl(pl.Callback):
    """One JSON line per optimizer step with every logged metric (rank 0 only), W&B or not."""

    def __init__(self, path: Path, metrics: Any = None):
        self.path = path
        # ltxdist.tracking.metrics.TrainingMetrics: the step's metrics reduced over ranks (and throughput,
        # MFU, memory, data wait); they override the rank-0 values of callback_metrics below.
        self.metrics = metrics
        self._last_step = -1

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or not self.path.exists():
            return
        # On resume, drop lines from steps after the checkpoint (they will be trained again) and a line
        # cut short by a kill.
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= trainer.global_step:
                    keep.append(line)
            except json.JSONDecodeError:
                continue
        write_bytes_atomic(self.path, "".join(ln + "\n" for ln in keep).encode())

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, *args: Any) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or step == self._last_step or step == 0:
            return
        self._last_step = step
        record: dict[str, Any] = {
            "step": step,
            "batches_seen": pl_module.batches_seen,
            "wall_time": time.time(),
        }
        if hasattr(pl_module, "step_summary"):
            record.update(pl_module.step_summary())
        for key, value in trainer.callback_metrics.items():  # anything else logged with self.log
            record[key] = value.item() if isinstance(value, torch.Tensor) else value
        record["lr"] = trainer.optimizers[0].param_groups[0]["lr"]
        parts = getattr(pl_module, "_last_parts", {})
        for stream in ("video", "audio"):
            for bucket, (total, count) in parts.get(f"sigma_buckets/{stream}", {}).items():
                if int(count) > 0:
                    record[f"loss/{stream}/sigma_{bucket}"] = float(total) / int(count)
        if getattr(pl_module, "_last_grad_norm", None) is not None:
            record["grad_norm"] = float(pl_module._last_grad_norm)
        guard = getattr(pl_module, "nonfinite", None)
        if guard is not None:
            # Steps skipped for a non-finite loss or gradients: the total so far, and this step.
            record["train/nonfinite_skipped"] = guard.total
            record["train/step_skipped"] = int(guard.last_skipped)
        if self.metrics is not None and self.metrics.latest_step == step:
            record.update(self.metrics.latest)
        _append_line(self.path, json.dumps(record) + "\n")
        # The same numbers go to W&B (and any other logger), so the two never disagree.
        scalars = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=step)


class StepProgressBar(pl.Callback):
    """tqdm bar over optimizer steps (not epochs: the stream is infinite) with loss and throughput."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._last_step = -1

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=trainer.max_steps,
                initial=trainer.global_step,
                desc="train",
                unit="step",
                dynamic_ncols=True,
            )
            self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self._bar is None or trainer.global_step == self._last_step:
            return
        self._bar.update(trainer.global_step - self._last_step)
        self._last_step = trainer.global_step
        m = pl_module.step_summary() if hasattr(pl_module, "step_summary") else trainer.callback_metrics
        postfix = {}
        if "loss" in m:
            postfix["loss"] = f"{float(m['loss']):.4f}"
        if "throughput/tokens_per_s" in m:
            postfix["tok/s"] = f"{float(m['throughput/tokens_per_s']):.0f}"
        self._bar.set_postfix(postfix, refresh=False)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _append_line(path: Path, line: str) -> None:
    """Append one whole line or nothing: a failed write (full disk) is cut back off, so the file never
    ends in half a record, and the error names the file."""
    data = line.encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except OSError as exc:
            os.ftruncate(fd, start)
            raise AtomicWriteError(
                exc.errno or errno.EIO, path, exc.strerror or str(exc), "a line to "
            ) from exc
    finally:
        os.close(fd)
