"""Issue 24, case 3: Ctrl-C keeps the work. SIGINT at step 3 with checkpoints every 10 used to exit 1 after
Lightning's "attempting graceful shutdown", newest checkpoint from before; nothing said how to resume.
Now SIGINT behaves like SIGTERM (checkpoint at the next step boundary), exits 0 and logs the one-line
command that resumes; a second Ctrl-C stops at once. In this process on the tiny model: the signal is
sent to this process from a callback at step 3, as a terminal would."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any
from unittest import mock

import lightning.pytorch as pl
import pytest
import torch
from e2e_utils import train_overrides
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from ltxdist.config.store import CONF_DIR, register_configs
from ltxdist.training.run_dir import complete_checkpoints


class CtrlC(pl.Callback):
    """Presses Ctrl-C `times` times at the end of optimizer step `at`."""

    def __init__(self, at: int, times: int):
        self.at, self.times = at, times

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.at:
            self.at = -1
            for _ in range(self.times):
                os.kill(os.getpid(), signal.SIGINT)


def _train_with_ctrl_c(overrides: list[str], at: int, times: int) -> int:
    """Exit status of `ltxdist-train OVERRIDES` with Ctrl-C pressed at step `at` (as Hydra runs it: with
    its HydraConfig, so the resume command is the real command line)."""
    from ltxdist.training import train as train_module

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        full = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(full)
    cfg = compose_without_hydra(full)
    build = train_module.build_trainer

    def build_with_ctrl_c(cfg_: Any, run_dir: Path, callbacks: list, logger: Any) -> Any:
        return build(cfg_, run_dir, [CtrlC(at=at, times=times), *callbacks], logger)

    threads, sigint = torch.get_num_threads(), signal.getsignal(signal.SIGINT)
    torch.set_num_threads(1)
    try:
        with mock.patch.object(train_module, "build_trainer", build_with_ctrl_c):
            train_module.train(cfg)
        return 0
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        torch.set_num_threads(threads)
        signal.signal(signal.SIGINT, sigint)  # Lightning ignores SIGINT after a KeyboardInterrupt
        HydraConfig.instance().cfg = None


def compose_without_hydra(full: Any) -> Any:
    from omegaconf import open_dict

    cfg = full.copy()
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def test_ctrl_c_checkpoints_at_the_next_step_and_exits_0(tiny_ckpt, tiny_data, tmp_path, caplog):
    run = tmp_path / "run"
    overrides = train_overrides(
        tiny_ckpt, tiny_data, run, **{"trainer.max_steps": 50, "trainer.checkpoint_every_n_steps": 10}
    )
    with caplog.at_level(logging.WARNING, logger="ltxdist"):
        status = _train_with_ctrl_c(overrides, at=3, times=1)
    assert status == 0
    # The signal came after step 3's one host read (tracking/metrics.py): every rank learns of it in the
    # next step's read, so the next step is the one checkpointed (as for SIGTERM).
    assert [s for s, _ in complete_checkpoints(run)] == [4], "the step after Ctrl-C is checkpointed"
    assert (run / "lora" / "lora_weights_step_000004.safetensors").is_file()
    [line] = [r.getMessage() for r in caplog.records if "SIGINT received" in r.getMessage()]
    command = line.split("Resume with: ", 1)[1]
    assert command == "ltxdist-train " + " ".join(overrides), "the same command resumes (run.resume=auto)"

    # Resumed with that command, a second Ctrl-C at once stops without a checkpoint of that step.
    status = _train_with_ctrl_c(overrides, at=6, times=2)
    assert status == 130, "the status of a process interrupted by Ctrl-C (Lightning's own would be 1)"
    assert [s for s, _ in complete_checkpoints(run)] == [4]
    assert not any((run / "lora" / f"lora_weights_step_00000{s}.safetensors").exists() for s in (6, 7))


def test_the_lora_written_on_a_stop_signal_is_logged_to_wandb(tiny_ckpt, tiny_data, tmp_path):
    """The stop checkpoint's LoRA is written inside the step's callbacks, which then stop the run: the
    W&B artifact callback still logs it (offline W&B here, read back from its run file)."""
    from tracking.wandb_records import of_type

    run = tmp_path / "run"
    extra = {"trainer.max_steps": 50, "trainer.checkpoint_every_n_steps": 10, "logger": "wandb"}
    overrides = [*train_overrides(tiny_ckpt, tiny_data, run, **extra), "logger.mode=offline"]
    assert _train_with_ctrl_c(overrides, at=2, times=1) == 0
    assert (run / "lora" / "lora_weights_step_000003.safetensors").is_file()
    (wandb_file,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    artifacts = of_type(wandb_file, "artifact")
    assert [sorted(a.aliases) for a in artifacts] == [["latest", "step-3"]]


@pytest.mark.parametrize("resume", ["run.resume=force", "+run.resume=never"])
def test_the_resume_command_drops_a_resume_override(resume, monkeypatch):
    from ltxdist.training.console import resume_command

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        full = compose("train", overrides=["lora.rank=4", "run.name=a b"], return_hydra_config=True)
    full.hydra.overrides.task.append(resume)
    HydraConfig.instance().set_config(full)
    try:
        assert resume_command() == "ltxdist-train lora.rank=4 'run.name=a b'"
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
        launcher = "torchrun --nproc_per_node 8 -m ltxdist.training.train"
        assert resume_command() == f"{launcher} lora.rank=4 'run.name=a b'"
    finally:
        HydraConfig.instance().cfg = None
