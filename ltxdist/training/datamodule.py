"""DataModule over cached-latent shards; resumes at the data position saved in the checkpoint."""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from ltxdist.data.mixing import MixedLatentStream, MixSource
from ltxdist.data.position import DataStart
from ltxdist.data.streaming import CachedLatentStream, StreamPlan

log = logging.getLogger("ltxdist")


class CachedLatentDataModule(pl.LightningDataModule):
    def __init__(self, data_cfg: Any, seed: int):
        super().__init__()
        self.data_cfg = data_cfg
        self.seed = seed

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        trainer = self.trainer
        assert trainer is not None
        module = trainer.lightning_module
        # Restored from the checkpoint at fit start, before dataloaders are built.
        start: DataStart = getattr(module, "data_start", None) or DataStart(
            int(getattr(module, "batches_seen", 0)), None
        )
        # Data ranks from the layout's `dp` mesh: the ranks of one sequence-parallel group read the same
        # samples, so the data is split by group, not by process. (No module: not training, one reader.)
        mesh = module.parallel_mesh if module is not None else None
        plan = StreamPlan(
            batch_size=self.data_cfg.batch_size,
            seed=self.seed,
            rank=mesh.data_rank if mesh is not None else 0,
            world_size=mesh.data_size if mesh is not None else 1,
            shuffle_buffer=self.data_cfg.shuffle_buffer,
            split=self.data_cfg.split,
        )
        stream: CachedLatentStream | MixedLatentStream
        if self.data_cfg.mix:
            sources = [MixSource(m.name, Path(m.path), m.weight) for m in self.data_cfg.mix]
            stream = MixedLatentStream(sources, plan, skip_batches=start.batches_seen)
        else:
            stream = CachedLatentStream(self.data_cfg.path, plan, skip_batches=start.batches_seen)
        cursors = start.cursors
        if cursors is None:
            # No cursors for this layout: find them from record headers (time grows with the position,
            # but no tensor is read), then seek as from saved ones.
            t0 = time.perf_counter()
            cursors = stream.cursors_after(start.batches_seen, self.data_cfg.num_workers)
            if start.batches_seen and trainer.is_global_zero:
                log.info(
                    "data position: %s; continuing after the samples consumed (%d micro-batches per "
                    "data-parallel rank in this layout), found from shard headers in %.2f s",
                    start.converted,
                    start.batches_seen,
                    time.perf_counter() - t0,
                )
        elif trainer.is_global_zero:
            log.info("data position: every worker's stream seeks to its saved cursor (same layout)")
        stream.cursors = cursors
        if module is not None:
            # The module records each role's cursor as it trains on that role's batches (LTXLoRAModule).
            module.data_cursors = list(cursors)
        return torch.utils.data.DataLoader(
            stream,
            batch_size=None,
            num_workers=self.data_cfg.num_workers,
            persistent_workers=False,
            worker_init_fn=ignore_interrupts,
        )

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        # A batch is a flat dict of tensors and host values (ids, metadata): move the tensors directly.
        # Lightning's generic walk re-inspects every list and dict entry: ~1 ms of Python per step.
        if not isinstance(batch, dict):
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def ignore_interrupts(worker_id: int) -> None:
    """DataLoader workers ignore Ctrl-C, which reaches the whole process group: the training process
    stops after the step with a checkpoint and then ends its workers (a worker that quit on Ctrl-C
    would fail the run before the checkpoint)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def empty_caption_dir(data_cfg: Any) -> Path:
    """Where the cached empty-caption embedding lives (the first source when mixing)."""
    return Path(data_cfg.mix[0].path if data_cfg.mix else data_cfg.path)
