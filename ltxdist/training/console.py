"""What `ltxdist-train` shows: a start-up summary, progress (a bar on a terminal, plain log lines in a
log file or a pipe), an end-of-run summary, and the command that resumes a stopped run. Third-party
start-up chatter (Lightning's device banner and tips, deprecation warnings) is kept out. Rank 0 only.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from ltxdist.sampling.defaults import LTX_2_3_STG_BLOCK

log = logging.getLogger("ltxdist")

LOSS_SMOOTHING = 0.9  # exponential moving average of the loss shown while training (about 10 steps)
PLAIN_LINE_EVERY_S = 30.0  # without a terminal: one progress line at most this often (and first / last)


def quiet_third_party() -> None:
    """Lightning's info messages ("GPU available", "TPU available", tips, "`Trainer.fit` stopped") and
    library deprecation warnings are for developers of those libraries, not for someone training a
    LoRA. Warnings stay visible when asked for with `python -W` / PYTHONWARNINGS."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if not sys.warnoptions:
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)


def hydra_overrides() -> list[str] | None:
    """The command line's Hydra overrides; None when the run was not started through Hydra's main (a
    test or a script calling train(cfg))."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None


def resume_command() -> str:
    """The command line that continues this run: the same overrides (run.resume=auto is the default and
    recognises the same run), launched the same way."""
    overrides = hydra_overrides()
    if overrides is None:  # train() called from Python: no command line to repeat
        return "the same command again (run.resume=auto continues from the newest checkpoint)"
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != "run.resume"]
    if os.environ.get("TORCHELASTIC_RUN_ID") is not None:
        nproc = os.environ.get("LOCAL_WORLD_SIZE", "N")
        launcher = f"torchrun --nproc_per_node {nproc} -m ltxdist.training.train"
    else:
        launcher = "ltxdist-train"
    return " ".join([launcher, *(shlex.quote(o) for o in kept)])


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def startup_summary(cfg: Any, identity: dict[str, Any], resume: str) -> str:
    """Several lines: what this run trains, on what, where it writes, and whether it resumes."""
    p, t = cfg.parallel, cfg.trainer
    processes = p.devices * p.num_nodes
    shown = identity.get("shown", {})
    schedule = cfg.optim.schedule
    rows = [
        ("run folder", f"{cfg.run.dir}: {resume}"),
        ("base model", f"{shown.get('model.checkpoint', cfg.model.checkpoint)}, {cfg.model.dtype}"),
        (
            "LoRA",
            f"rank {cfg.lora.rank}, alpha {cfg.lora.alpha:g}, targets {shown.get('lora.targets', '')}"
            + (f", blocks {list(cfg.lora.blocks)}" if cfg.lora.blocks is not None else ""),
        ),
        ("strategy", str(cfg.strategy.name)),
        ("data", shown.get("data", "")),
        (
            "training",
            f"{t.max_steps} steps; batch {cfg.data.batch_size} x {processes} process(es) x "
            f"{t.accumulate_grad_batches} accumulation; {cfg.optim.name} lr {cfg.optim.lr:g}, "
            f"{schedule.name} schedule",
        ),
        ("parallel", f"{p.name} on {p.accelerator} ({p.devices} device(s) x {p.num_nodes} node(s))"),
        (
            "writes",
            f"checkpoints every {t.checkpoint_every_n_steps} steps (newest {t.keep_last_k} kept), "
            "LoRA files, metrics.jsonl, config.yaml",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    return "ltxdist-train\n" + "\n".join(f"  {name:<{width}}  {text}" for name, text in rows)


class ProgressReporter(pl.Callback):
    """Progress per optimizer step: a tqdm bar on a terminal (smoothed loss, learning rate, tokens/s),
    otherwise plain log lines (first step, then at most every PLAIN_LINE_EVERY_S, and the last step).
    Keeps what the end-of-run summary reports."""

    def __init__(self, metrics: Any, interactive: bool | None = None, show: bool = True):
        self.metrics = metrics  # ltxdist.tracking.metrics.TrainingMetrics: the step's reduced values
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self.show = show  # trainer.progress_bar=false: no bar or progress lines, the summary stays
        self._bar: Any = None
        self.start_step: int | None = None  # None: training never started (the run was already done)
        self.last_step = -1
        self.first_loss: float | None = None
        self.smoothed_loss: float | None = None
        self.lr: float | None = None
        self._started = 0.0
        self._last_line = 0.0

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self._started if self._started else 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start_step = self.last_step = trainer.global_step
        self._started = time.monotonic()
        if not (trainer.is_global_zero and self.show):
            return
        if self.interactive:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=trainer.max_steps,
                initial=trainer.global_step,
                desc="train",
                unit="step",
                dynamic_ncols=True,
            )

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step == self.last_step or not trainer.is_global_zero:
            return
        done = step - self.last_step
        self.last_step = step
        m = self.metrics.latest if self.metrics.latest_step == step else {}
        if "loss/total" in m:
            loss = float(m["loss/total"])
            if self.first_loss is None:
                self.first_loss = loss
            s = self.smoothed_loss
            self.smoothed_loss = loss if s is None else LOSS_SMOOTHING * s + (1 - LOSS_SMOOTHING) * loss
        self.lr = float(m.get("optim/lr", trainer.optimizers[0].param_groups[0]["lr"]))
        tokens = m.get("throughput/tokens_per_s")
        if not self.show:
            return
        if self._bar is not None:
            postfix = {"lr": f"{self.lr:.2e}"}
            if self.smoothed_loss is not None:
                postfix["loss"] = f"{self.smoothed_loss:.4f}"
            if tokens is not None:
                postfix["tok/s"] = f"{float(tokens):.0f}"
            self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(done)
            return
        now, start = time.monotonic(), self.start_step or 0
        first, last = step == start + 1, step >= trainer.max_steps
        if not (first or last or now - self._last_line >= PLAIN_LINE_EVERY_S):
            return
        self._last_line = now
        per_step = self.elapsed_s / max(1, step - start)
        parts = [f"step {step}/{trainer.max_steps}"]
        if self.smoothed_loss is not None and "loss/total" in m:
            parts.append(f"loss {float(m['loss/total']):.4f} (smoothed {self.smoothed_loss:.4f})")
        parts.append(f"lr {self.lr:.2e}")
        parts.append(f"{per_step:.2f} s/step")
        if tokens is not None:
            parts.append(f"{float(tokens):.0f} tok/s")
        if not last:
            parts.append(f"eta {_duration(per_step * (trainer.max_steps - step))}")
        log.info("  ".join(parts))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exc: BaseException) -> None:
        self.on_train_end(trainer, pl_module)


def end_summary(
    run_dir: Path,
    final_lora: Path,
    final_step: int,
    progress: ProgressReporter,
    max_steps: int,
    *,
    checkpoint: str = "BASE",
    num_blocks: int | None = None,
) -> str:
    """Several lines: what was trained, how long it took, where the results are, what to run next (a
    sampling command for this base; a model without ltxdist-sample's default STG block gets its own)."""
    start = final_step if progress.start_step is None else progress.start_step
    trained = final_step - start
    if trained <= 0:
        head = (
            f"nothing to train: the run is already at step {final_step} (trainer.max_steps={max_steps}); "
            "raise trainer.max_steps to train it longer"
        )
    else:
        head = (
            f"done: steps {start + 1}-{final_step} in {_duration(progress.elapsed_s)} "
            f"({progress.elapsed_s / trained:.2f} s/step)"
        )
        if progress.smoothed_loss is not None and progress.first_loss is not None:
            head += (
                f"; loss {progress.first_loss:.4f} at the first step, "
                f"{progress.smoothed_loss:.4f} (smoothed) at the end"
            )
    rows = [
        ("LoRA", f"{final_lora} (ComfyUI / ltx-core format)"),
        ("checkpoints", str(run_dir / "checkpoints")),
        ("metrics", str(run_dir / "metrics.jsonl")),
        ("look at it", _sample_command(checkpoint, final_lora, num_blocks)),
    ]
    width = max(len(name) for name, _ in rows)
    return head + "\n" + "\n".join(f"  {name:<{width}}  {text}" for name, text in rows)


def _sample_command(checkpoint: str, final_lora: Path, num_blocks: int | None) -> str:
    stg = (
        f" --stg-blocks {num_blocks - 1}"
        if num_blocks is not None and num_blocks <= LTX_2_3_STG_BLOCK
        else ""
    )
    return f"ltxdist-sample --checkpoint {checkpoint} --gemma GEMMA --lora {final_lora}:1.0{stg} --prompt .."
