"""Training callbacks: checkpoints + LoRA export with keep-last-k, and metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from ltxdist.io import write_bytes_atomic
from ltxdist.lora import export_lora
from ltxdist.lora.targets import expand_targets
from ltxdist.training.run_dir import checkpoint_path, complete_checkpoints, lora_path


class CheckpointAndExport(pl.Callback):
    """Every `every_n_steps` optimizer steps (and at the end): a full training-state checkpoint under
    checkpoints/step-N/, and the ComfyUI-format LoRA under lora/. Keeps the newest `keep_last_k`."""

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

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step > 0 and step % self.every_n_steps == 0 and step != self._last_saved_step:
            self.save(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step != self._last_saved_step:
            self.save(trainer, pl_module)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A resumed run must not rewrite the checkpoint it started from.
        self._last_saved_step = trainer.global_step

    def save(self, trainer: pl.Trainer, pl_module: Any) -> None:
        step = trainer.global_step
        trainer.save_checkpoint(checkpoint_path(self.run_dir, step), weights_only=False)  # all ranks call
        if trainer.is_global_zero:
            export_lora(
                pl_module.transformer,
                lora_path(self.run_dir, step),
                base_model_version=pl_module.model_version,
                training_strategy=self.strategy_name,
                step=step,
                target_modules=expand_targets(list(pl_module.cfg.lora.targets)),
                extra_metadata=self.extra_metadata,
            )
            for _, old in complete_checkpoints(self.run_dir)[: -self.keep_last_k]:
                trainer.strategy.checkpoint_io.remove_checkpoint(old)
        trainer.strategy.barrier("ltxdist-checkpoint")
        self._last_saved_step = step


class MetricsJsonl(pl.Callback):
    """One JSON line per optimizer step with every logged metric (rank 0 only), W&B or not."""

    def __init__(self, path: Path):
        self.path = path
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
        record: dict[str, Any] = {"step": step, "batches_seen": pl_module.batches_seen}
        for key, value in trainer.callback_metrics.items():
            record[key] = value.item() if isinstance(value, torch.Tensor) else value
        record["lr"] = trainer.optimizers[0].param_groups[0]["lr"]
        parts = getattr(pl_module, "_last_parts", {})
        for stream in ("video", "audio"):
            for bucket, (total, count) in parts.get(f"sigma_buckets/{stream}", {}).items():
                if int(count) > 0:
                    record[f"loss/{stream}/sigma_{bucket}"] = float(total) / int(count)
        if getattr(pl_module, "_last_grad_norm", None) is not None:
            record["grad_norm"] = float(pl_module._last_grad_norm)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


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
        m = trainer.callback_metrics
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
