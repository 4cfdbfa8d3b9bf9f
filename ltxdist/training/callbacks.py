"""Training callbacks: resume, checkpoints + LoRA export with keep-last-k (also on SIGUSR1 / SIGTERM,
with SLURM requeue), metrics.jsonl and the progress bar."""

from __future__ import annotations

import contextlib
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

from ltxdist.checkpoint import save_checkpoint
from ltxdist.io import AtomicWriteError, write_bytes_atomic
from ltxdist.lora import export_lora
from ltxdist.lora.targets import expand_targets
from ltxdist.parallel.gather import gather_to_rank0
from ltxdist.training.agreement import any_rank
from ltxdist.training.checkpointing import (
    ResumePlan,
    capture_train_state,
    resume,
    trainable_state,
    warm_start,
)
from ltxdist.training.run_dir import checkpoint_path, complete_checkpoints, delete_checkpoint, lora_path

log = logging.getLogger("ltxdist")
# Ctrl-C (SIGINT) stops like SIGTERM, with a checkpoint at the next step, then exits 0; a second Ctrl-C
# stops at once, with the status of a process interrupted by Ctrl-C.
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
INTERRUPTED_STATUS = 128 + signal.SIGINT  # 130


class CheckpointAndExport(pl.Callback):
    """Resumes (or warm-starts) a run at fit start, then every `every_n_steps` optimizer steps (and at
    the end) writes the ComfyUI-format LoRA under lora/ and a full training-state checkpoint under
    checkpoints/step-N/ (ltxdist.checkpoint), keeping the newest `keep_last_k`.

    `resume` is run.resume (training/checkpointing.py); `init_from` is lora.init_from (a warm start of a
    fresh run); `extra` is stored in every checkpoint's train state (callers' own fields, e.g. a run
    identity); `resume_plan` is the checkpoint the training entry point chose (and checked) for it.

    SIGUSR1, SIGTERM (SLURM's warning before the time limit, preemption, `kill`) or SIGINT (Ctrl-C) on
    any rank: at the next optimizer-step boundary every rank writes the checkpoint, rank 0 prints the
    command that resumes, then the process exits with 128 + signal (0 after Ctrl-C: the user asked to
    stop and nothing is lost); after SIGUSR1 inside a SLURM job rank 0 first requeues the job, which
    resumes from that checkpoint (run.resume=auto). A second Ctrl-C stops at once, without a checkpoint
    (exit status 130). The handler only sets a flag: the checkpoint is written by the training loop,
    never from inside a signal handler.
    """

    def __init__(
        self,
        run_dir: Path,
        every_n_steps: int,
        keep_last_k: int,
        strategy_name: str,
        extra_metadata: dict[str, Any] | None = None,
        step_metrics: Any = None,
        resume_command: str = "the same command (run.resume=auto)",
        *,
        resume: str = "never",
        init_from: str | None = None,
        extra: dict[str, Any] | None = None,
        resume_plan: ResumePlan | None = None,
    ):
        self.run_dir = run_dir
        self.resume_command = resume_command  # printed when a signal stops the run
        # tracking.metrics.TrainingMetrics: whether any rank received a stop signal travels in the step's
        # one host sync (`_signal_on_any_rank`); without it, this callback reduces the flag itself.
        self.step_metrics = step_metrics
        if step_metrics is not None:
            for sig in STOP_SIGNALS:
                step_metrics.add_step_counter(_signal_slot(sig), lambda sig=sig: float(self._signal == sig))
        self.every_n_steps = every_n_steps
        self.keep_last_k = keep_last_k
        self.strategy_name = strategy_name
        self.extra_metadata = extra_metadata or {}
        self.resume_mode = resume
        self.init_from = init_from
        self.resume_plan = resume_plan
        self.extra = extra if extra is not None else {}  # may be filled in before the first save
        self._last_saved_step = -1
        self._last_checked_step = -1
        self._signal = 0  # signal number received by this process, 0 = none
        self._interrupts = 0  # Ctrl-C presses: the second one stops at once
        self._previous_handlers: dict[int, Any] = {}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        resumed = resume(trainer, pl_module, self.run_dir, self.resume_mode, self.resume_plan)
        if resumed is None and self.init_from:
            warm_start(trainer, pl_module, self.init_from)

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

    # -- signals -----------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self._previous_handlers:
            # Training is over, but Lightning's teardown re-installed this handler (it was current
            # when Lightning saved "the original"): behave as if it were not there.
            signal.signal(signum, signal.SIG_DFL if signum != signal.SIGINT else signal.default_int_handler)
            os.kill(os.getpid(), signum)
            return
        if signum == signal.SIGINT:
            self._interrupts += 1
            if self._interrupts > 1:
                _say("\nsecond Ctrl-C: stopping now, without a checkpoint of the current step\n")
                # Not KeyboardInterrupt: Lightning turns that into sys.exit(1). SystemExit unwinds through
                # the same teardown and keeps the status of an interrupted process.
                raise SystemExit(INTERRUPTED_STATUS)
            _say("\nCtrl-C: stopping after this step, with a checkpoint (Ctrl-C again stops at once)\n")
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
        """The strongest signal any rank received (SIGTERM > SIGUSR1), 0 if none, the same on every rank:
        all ranks must stop at the same step. Read from the step's one host sync (each rank's flag as of
        its `read_step`: a later signal is seen at the next step); else one tiny all-reduce."""
        values = (
            self.step_metrics.values_of_step(trainer.global_step) if self.step_metrics is not None else {}
        )
        if values:
            return max((int(sig) for sig in STOP_SIGNALS if values[_signal_slot(sig)] > 0), default=0)
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
            log.warning(
                "%s received: checkpoint for step %d written (%s); stopping. Resume with: %s",
                name,
                step,
                checkpoint_path(self.run_dir, step),
                self.resume_command,
            )
            if signum == signal.SIGUSR1:
                _requeue_slurm_job()
        self._restore_signal_handlers()
        # Unwinds through Lightning's interrupt handling (teardown on every rank); 128 + signal is the
        # status a process killed by that signal would have had. Ctrl-C is the user's own request to
        # stop, and nothing was lost: success.
        raise SystemExit(0 if signum == signal.SIGINT else 128 + signum)

    def save(self, trainer: pl.Trainer, pl_module: Any) -> None:
        """Collective: the LoRA file, then the checkpoint, then keep-last-k.

        The LoRA file comes first, so a complete checkpoint always has its LoRA file (a resumed run does
        not write that step again), while a LoRA file whose checkpoint never completed is rewritten
        identically when the resumed run reaches its step. A failed write (full disk) on any rank fails
        on every rank together with an error naming the path, rather than leaving the other ranks
        waiting in the next collective; the previous complete checkpoint is untouched."""
        step = trainer.global_step
        path = lora_path(self.run_dir, step)
        failure: OSError | None = None
        try:
            # Every rank takes part in gathering sharded adapters; only rank 0 holds them whole and writes.
            export_lora(
                pl_module.transformer,
                path,
                base_model_version=pl_module.model_version,
                training_strategy=self.strategy_name,
                step=step,
                target_modules=expand_targets(list(pl_module.cfg.lora.targets)),
                extra_metadata=self.extra_metadata,
                full_tensor=gather_to_rank0,
            )
        except OSError as exc:
            failure = exc
        _fail_together(trainer, failure, path)
        save_checkpoint(
            checkpoint_path(self.run_dir, step),
            trainable_state(trainer, pl_module),
            capture_train_state(trainer, pl_module, self.extra),
        )
        if trainer.is_global_zero:
            self._keep_last_k(step)
        trainer.strategy.barrier("ltxdist-checkpoint")
        self._last_saved_step = step

    def _keep_last_k(self, step: int) -> None:
        """Delete all but the newest `keep_last_k` checkpoints of this run's branch: steps up to the one
        just written. A later step in the folder is never this branch's (the entry point moves an
        abandoned branch aside before training) and is never deleted here."""
        own = [path for s, path in complete_checkpoints(self.run_dir) if s <= step]
        for old in own[: -self.keep_last_k]:
            try:
                delete_checkpoint(old)
            except OSError as exc:  # rank 0 alone, before a barrier: never fail the run for a clean-up
                log.warning("keep-last-k: could not delete %s (%s); it stays", old, exc)


def _signal_slot(sig: signal.Signals) -> str:
    return f"signal/{sig.name}"


def _say(text: str) -> None:
    """Write to stderr from a signal handler (os.write is safe there; logging and print are not)."""
    with contextlib.suppress(OSError):
        os.write(2, text.encode())


def _fail_together(trainer: pl.Trainer, failure: OSError | None, path: Path) -> None:
    """Raise on every rank if a write failed on any (one all-reduce when distributed)."""
    failed_anywhere = any_rank(trainer, failure is not None)
    if failure is not None:
        raise failure
    if failed_anywhere:
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
    """One JSON line per optimizer step (rank 0 only), W&B or not: the record header (`step`,
    `batches_seen`: this rank's data position, `wall_time`) and the step's metrics as
    tracking/metrics.py reduced them over ranks, which go to every logger (W&B) as well."""

    HEADER = ("step", "batches_seen", "wall_time")

    def __init__(self, path: Path, metrics: Any):
        self.path = path
        self.metrics = metrics  # ltxdist.tracking.metrics.TrainingMetrics
        self._last_step = -1

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The starting step has its line already (a resumed run) or none (step 0): the micro-batches of
        # the first step under gradient accumulation end at this step and must not write one.
        self._last_step = trainer.global_step
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
        metrics = self.metrics.latest if self.metrics.latest_step == step else {}
        record = {"step": step, "batches_seen": pl_module.batches_seen, "wall_time": time.time(), **metrics}
        _append_line(self.path, json.dumps(record) + "\n")
        # The same numbers go to W&B (and any other logger), so the two never disagree.
        for logger in trainer.loggers:
            logger.log_metrics(dict(metrics), step=step)


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
