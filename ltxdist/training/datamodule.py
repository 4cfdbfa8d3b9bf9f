"""DataModule over cached-latent shards; resumes at the data position saved in the checkpoint."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from ltxdist.data.mixing import MixedLatentStream, MixSource
from ltxdist.data.streaming import CachedLatentStream, StreamPlan
from ltxdist.parallel.sequence_parallel import data_parallel_layout


class CachedLatentDataModule(pl.LightningDataModule):
    def __init__(self, data_cfg: Any, seed: int, sequence_parallel: int = 1):
        super().__init__()
        self.data_cfg = data_cfg
        self.seed = seed
        self.sequence_parallel = sequence_parallel

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        trainer = self.trainer
        assert trainer is not None
        # Restored from the checkpoint before dataloaders are built (Lightning restores modules first).
        skip = int(getattr(trainer.lightning_module, "batches_seen", 0))
        # The ranks of one sequence-parallel group read the same samples: split by group, not by rank.
        data_parallel = data_parallel_layout(trainer.global_rank, trainer.world_size, self.sequence_parallel)
        plan = StreamPlan(
            batch_size=self.data_cfg.batch_size,
            seed=self.seed,
            rank=data_parallel.rank,
            world_size=data_parallel.size,
            shuffle_buffer=self.data_cfg.shuffle_buffer,
            split=self.data_cfg.split,
        )
        stream: torch.utils.data.IterableDataset
        if self.data_cfg.mix:
            sources = [MixSource(m.name, Path(m.path), m.weight) for m in self.data_cfg.mix]
            stream = MixedLatentStream(sources, plan, skip_batches=skip)
        else:
            stream = CachedLatentStream(self.data_cfg.path, plan, skip_batches=skip)
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
