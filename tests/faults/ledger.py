"""Test-side instrumentation: which sample ids each optimizer step trained on, per rank and attempt.

`IdLedger` (first among the callbacks, so before the step's checkpoint is written) appends one JSON
line per micro-batch, after its optimizer step, to `RUN/ledger/rank-R-PID-STARTNS.jsonl`; a killed
attempt leaves its own file. `read_ledger` keeps, for every (rank, step), the line of the newest
attempt that reached it: that attempt's work is what survived."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl


class IdLedger(pl.Callback):
    def __init__(self, directory: Path):
        self.directory = directory
        self.path: Path | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / f"rank-{trainer.global_rank}-{os.getpid()}-{time.time_ns()}.jsonl"

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, *_: Any
    ) -> None:
        guard = getattr(pl_module, "nonfinite", None)
        line = {
            "step": trainer.global_step,  # the optimizer step this micro-batch went into
            "rank": trainer.global_rank,
            "ids": list(batch["ids"]),
            "skipped": bool(guard.last_skipped) if guard is not None else False,
            "t": time.time_ns(),
        }
        assert self.path is not None
        with open(self.path, "a") as f:  # one line per write: a kill loses at most a partial line
            f.write(json.dumps(line) + "\n")


def read_ledger(directory: Path) -> dict[tuple[int, int], dict[str, Any]]:
    """(rank, step) -> the surviving line (ids, skipped)."""
    attempts = []
    for path in directory.glob("rank-*.jsonl"):
        lines = []
        for raw in path.read_text().splitlines():
            try:
                lines.append(json.loads(raw))
            except json.JSONDecodeError:
                continue  # the line a kill cut short
        if lines:
            attempts.append((lines[0]["t"], lines))
    out: dict[tuple[int, int], dict[str, Any]] = {}
    for _, lines in sorted(attempts, key=lambda a: a[0]):
        for line in lines:
            out[(line["rank"], line["step"])] = line
    return out
