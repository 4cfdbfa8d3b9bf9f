"""Running tiny training jobs for the parallel tests: 1 process through `ltxdist-train`, 2 or 4 processes
through `launch/train.sh` (torchrun, gloo, CPU), plus readers for what a run leaves behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from e2e_utils import BIN, REPO, train_overrides

from ltxdist.checkpoint import read_checkpoint
from ltxdist.parallel.materialize_report import REPORT_ENV

__all__ = ["BIN", "LAUNCH", "REPO", "REPORT_ENV", "train_overrides"]
LAUNCH = REPO / "launch" / "train.sh"


# Every run below: same global batch (4) and a schedule that changes every step, so the comparison
# also checks that the learning rate advances once per optimizer step whatever the process count.
COMMON = {
    "trainer.max_steps": 8,
    "trainer.checkpoint_every_n_steps": 4,
    "trainer.keep_last_k": 3,
    "data.shuffle_buffer": 1,
    "data.split": "sample",
    "lora.dropout": 0.0,
    "optim.schedule.name": "cosine",
    "optim.schedule.warmup_steps": 2,
}
GLOBAL_BATCH = 4
CPU_GLOO = {"parallel.accelerator": "cpu", "parallel.process_group_backend": "gloo"}


def env(extensions_dir: Path | None = None, **extra: str) -> dict[str, str]:
    out = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHON": sys.executable, **extra}
    if extensions_dir is not None:
        # DeepSpeed compiles a small C++ op on first use (~30 s): keep it between test sessions.
        out["TORCH_EXTENSIONS_DIR"] = str(extensions_dir)
    return out


def command(
    ckpt: Path, data: Path, run_dir: Path, nproc: int, *, via_launch: bool = False, **overrides: object
) -> list[str]:
    """Several processes always go through launch/train.sh (torchrun), each with batch GLOBAL_BATCH / nproc
    (override data.batch_size where processes share samples); 1 process through `ltxdist-train`, or with
    `via_launch` through launch/train.sh too (NPROC=1)."""
    layout = {"data.batch_size": GLOBAL_BATCH // nproc, **(CPU_GLOO if nproc > 1 else {})}
    args = train_overrides(ckpt, data, run_dir, **{**COMMON, **layout, **overrides})
    if nproc == 1 and not via_launch:
        return [str(BIN / "ltxdist-train"), *args]
    return ["bash", str(LAUNCH), *args]


def run(
    ckpt: Path, data: Path, run_dir: Path, nproc: int, run_env: dict[str, str], **overrides: object
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        command(ckpt, data, run_dir, nproc, **overrides),
        env={**run_env, "NPROC": str(nproc)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    return proc


def materialize_reports(folder: Path) -> list[dict]:
    """What each rank of a run recorded while materialising the model into `folder` (the run's
    LTXDIST_MATERIALIZE_REPORT, ltxdist/parallel/materialize_report.py), by rank."""
    return [json.loads(p.read_text()) for p in sorted(folder.glob("rank-*.json"))]


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def adapters(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return read_checkpoint(run_dir / "checkpoints" / f"step-{step:06d}").adapters


def moments(run_dir: Path, step: int) -> dict[str, dict[str, torch.Tensor]]:
    return read_checkpoint(run_dir / "checkpoints" / f"step-{step:06d}").optimizer


def assert_same_adapters(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    # fp32 on CPU: only the order of floating-point sums differs between layouts.
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5, msg=key)
