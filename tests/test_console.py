"""What ltxdist-train shows (issue 24, the console): a start-up summary with the resume decision, progress
as plain log lines when output is not a terminal (learning rate and smoothed loss), an end-of-run summary.
In this process on the tiny model; pytest's captured output is not a terminal."""

from __future__ import annotations

import logging

from e2e_utils import compose_train, train_in_process, train_overrides


def _train(overrides: list[str]) -> None:
    train_in_process(compose_train(overrides))


def test_start_progress_and_end_of_run_are_reported(tiny_ckpt, tiny_data, tmp_path, caplog):
    run = tmp_path / "run"
    extra = {"trainer.max_steps": 3, "trainer.checkpoint_every_n_steps": 3, "trainer.progress_bar": "true"}
    overrides = train_overrides(tiny_ckpt, tiny_data, run, **extra)
    with caplog.at_level(logging.INFO, logger="ltxdist"):
        _train(overrides)
    text = caplog.text
    summary = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("ltxdist-train\n"))
    rows = {line.split()[0]: line for line in summary.splitlines()[1:]}
    assert rows["run"].endswith(f"{run}: new run")
    assert str(tiny_ckpt) in rows["base"] and "LTX 2.3.0" in rows["base"]
    assert "rank 4, alpha 8" in rows["LoRA"] and "attn" in rows["LoRA"]
    assert str(tiny_data) in rows["data"] and "24 samples" in rows["data"]
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert progress[0].startswith("step 1/3") and progress[-1].startswith("step 3/3"), progress
    assert all("lr 3.00e-03" in p and "smoothed" in p for p in progress)
    assert "done: steps 1-3" in text and str(run / "lora" / "lora_weights_step_000003.safetensors") in text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ltxdist"):
        _train(overrides)  # the same command again: resumes at the end and says so
    assert f"{run}: resuming from {run / 'checkpoints' / 'step-000003'}" in caplog.text
    assert "nothing to train: the run is already at step 3 (trainer.max_steps=3)" in caplog.text


def test_the_end_summary_names_a_sampling_command_that_runs_on_this_base(tmp_path):
    """ltxdist-sample's default STG block is 29: a model with fewer blocks (the tiny one has 2) needs
    --stg-blocks in the suggested command, or the command fails; the base is named, not a placeholder."""
    from pathlib import Path

    from ltxdist.training.console import ProgressReporter, end_summary

    progress = ProgressReporter(metrics=None, interactive=False, show=False)
    lora = Path("runs/x/lora/lora_weights_step_000002.safetensors")
    tiny = end_summary(tmp_path, lora, 2, progress, 2, checkpoint="models/tiny.safetensors", num_blocks=2)
    assert "ltxdist-sample --checkpoint models/tiny.safetensors" in tiny and "--stg-blocks 1 " in tiny
    full = end_summary(tmp_path, lora, 2, progress, 2, checkpoint="ltx-2.3-22b.safetensors", num_blocks=48)
    assert "--stg-blocks" not in full and f"--lora {lora}:1.0" in full
