"""`ltxdist-train` with test-side instrumentation, for the fault battery's subprocess runs:

- an IdLedger callback (ledger.py) records the sample ids of every optimizer step;
- FAULT_SLOW_CHECKPOINT_S=x sleeps x seconds before a checkpoint's completion marker is written, so a
  kill aimed at "checkpoint writing" lands inside it (the write itself is ltxdist's own code);
- FAULT_INF_LOSS_IDS=id1,id2 adds +Inf to the loss of a micro-batch holding one of these sample ids: a
  non-finite loss whose gradients stay finite (the Inf does not depend on the adapters).

Run as a script (`python instrumented_train.py OVERRIDES`, also under torchrun)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]


def _install() -> None:
    from ledger import IdLedger

    from ltxdist.checkpoint import checkpointer
    from ltxdist.training import train as train_module

    build = train_module.build_trainer

    def build_with_ledger(cfg, run_dir, callbacks, logger):  # type: ignore[no-untyped-def]
        return build(cfg, run_dir, [IdLedger(Path(run_dir) / "ledger"), *callbacks], logger)

    train_module.build_trainer = build_with_ledger
    delay = float(os.environ.get("FAULT_SLOW_CHECKPOINT_S", "0"))
    if delay > 0:
        write_json = checkpointer.write_json_atomic

        def slow_write_json(path, obj):  # type: ignore[no-untyped-def]
            if Path(path).name == checkpointer.COMPLETE_FILE:
                time.sleep(delay)
            write_json(path, obj)

        checkpointer.write_json_atomic = slow_write_json
    inf_ids = {i for i in os.environ.get("FAULT_INF_LOSS_IDS", "").split(",") if i}
    if inf_ids:
        from ltxdist.training.module import LTXLoRAModule

        compute_loss = LTXLoRAModule.compute_loss

        def inf_loss(self, batch):  # type: ignore[no-untyped-def]
            loss, parts = compute_loss(self, batch)
            if inf_ids & set(batch["ids"]):
                loss = loss + float("inf")
            return loss, parts

        LTXLoRAModule.compute_loss = inf_loss


if __name__ == "__main__":
    _install()
    from ltxdist.training.train import main

    main()
