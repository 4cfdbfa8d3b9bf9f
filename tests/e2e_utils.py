"""Paths and override builders shared by the end-to-end tests."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def train_overrides(ckpt: Path, data: Path, run_dir: Path, **extra: object) -> list[str]:
    """Hydra overrides for a small, deterministic fp32 CPU run."""
    base = {
        "experiment": "tiny_demo",
        "model.checkpoint": ckpt,
        "model.dtype": "float32",
        "data.path": data,
        "run.dir": run_dir,
        "trainer.progress_bar": "false",
        "trainer.max_steps": 12,
        "trainer.checkpoint_every_n_steps": 4,
        "lora.rank": 4,
        "lora.alpha": 8,
    }
    base.update({k: v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in base.items()]


def tiny_validation_overrides(prompts: list[str], gemma: Path, every_n_steps: int) -> dict[str, object]:
    """Validation sampling at the smallest size that still runs the whole sampler (64x64, 9 frames, 2
    steps, STG on the tiny model's block 1), video only."""
    return {
        "validation": "default",
        "validation.gemma_root": gemma,
        "validation.every_n_steps": every_n_steps,
        "validation.at_start": "false",
        "validation.with_audio": "false",
        "validation.width": 64,
        "validation.height": 64,
        "validation.num_frames": 9,
        "validation.steps": 2,
        "validation.stg_blocks": "[1]",
        "validation.prompts": "[" + ",".join(prompts) + "]",
    }


def prepare_command(raw: Path, out: Path, checkpoint: Path, gemma: Path, *extra: str) -> list[str]:
    """`ltxdist-prepare` on the CPU, one sample per shard, the tiny model's 64x64x17 bucket unless `extra`
    gives --buckets, no progress bar (as a subprocess)."""
    buckets = () if "--buckets" in extra else ("--buckets", "64x64x17")
    return [
        sys.executable,
        "-m",
        "ltxdist.data.prepare.cli",
        str(raw),
        *("--out", str(out), "--checkpoint", str(checkpoint), "--gemma", str(gemma)),
        *("--samples-per-shard", "1", "--device", "cpu", "--no-progress"),
        *buckets,
        *extra,
    ]


def free_port() -> int:
    """A TCP port free right now on the loopback (for MASTER_PORT): tests may run side by side."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def compose_train(overrides: list[str]):
    """The training config these overrides compose to, closed and checked as the command line's is."""
    from ltxdist.config.store import compose_train_config

    return compose_train_config(overrides)


def train_in_process(cfg) -> Path:
    """`ltxdist.training.train.train(cfg)` in this process on one thread (what the subprocess runs get),
    the thread count restored after."""
    import torch

    from ltxdist.training.train import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(cfg)
    finally:
        torch.set_num_threads(threads)
