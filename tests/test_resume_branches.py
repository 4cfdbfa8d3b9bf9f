"""A run folder over several starts: what `run.resume=never`, an explicit older checkpoint, a damaged
or old-format newest checkpoint and `run.resume=force` do to the checkpoints, LoRA files and metrics
already there, and what the resumed steps train with. In this process, on the tiny model."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from e2e_utils import compose_train, train_in_process, train_overrides

from ltxdist.checkpoint import LegacyCheckpointError, read_train_state
from ltxdist.training.run_dir import complete_checkpoints, lora_dir
from ltxdist.training.run_identity import ResumeRefusedError


def _cfg(ckpt: Path, data: Path, run: Path, *raw: str, **extra: object):
    return compose_train([*train_overrides(ckpt, data, run, **extra), *raw])


_train = train_in_process


def _steps(run: Path) -> list[int]:
    return [s for s, _ in complete_checkpoints(run)]


def _loras(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.safetensors"))


def _metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_never_refuses_a_folder_that_holds_a_run(tiny_ckpt, tiny_data, tmp_path):
    run = tmp_path / "run"
    _train(_cfg(tiny_ckpt, tiny_data, run, **{"trainer.max_steps": 2, "trainer.checkpoint_every_n_steps": 2}))
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    again = _cfg(tiny_ckpt, tiny_data, run, "run.resume=never", **{"trainer.max_steps": 1})
    with pytest.raises(ResumeRefusedError) as refused:
        _train(again)
    message = str(refused.value)
    assert str(run) in message and "run.dir=NEW_FOLDER" in message  # this run.dir does not follow run.name
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before, "nothing in the folder changed"


def test_an_older_checkpoint_branches_and_the_abandoned_steps_are_kept_aside(
    tiny_ckpt, tiny_data, tmp_path, caplog
):
    run = tmp_path / "run"
    every4 = {"trainer.max_steps": 8, "trainer.checkpoint_every_n_steps": 4, "trainer.keep_last_k": 3}
    _train(_cfg(tiny_ckpt, tiny_data, run, **every4))
    assert _steps(run) == [4, 8]
    old_metrics = (run / "metrics.jsonl").read_text()

    # Continue from step 4, checkpoints every 2 steps, keeping 2: the new steps 6 (and 4) must survive
    # the old branch's step 8, which is moved aside, not deleted and not resumed later.
    branch = {"trainer.max_steps": 6, "trainer.checkpoint_every_n_steps": 2, "trainer.keep_last_k": 2}
    older = run / "checkpoints" / "step-000004"
    with caplog.at_level(logging.WARNING, logger="ltxdist"):
        _train(_cfg(tiny_ckpt, tiny_data, run, f"run.resume={older}", **branch))
    assert _steps(run) == [4, 6]
    assert _loras(lora_dir(run)) == [
        "lora_weights_step_000004.safetensors",
        "lora_weights_step_000006.safetensors",
    ]
    (aside,) = (run / "abandoned").iterdir()
    assert aside.name.startswith("000004-") and str(aside) in caplog.text
    assert _steps(aside) == [8]  # RUN/abandoned/<step>-<time>/checkpoints/step-000008, complete
    assert _loras(aside / "lora") == ["lora_weights_step_000008.safetensors"]
    assert (aside / "metrics.jsonl").read_text() == old_metrics
    assert [r["step"] for r in _metrics(run / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]

    # The same folder with run.resume=auto continues the new branch (step 6), not the abandoned step 8.
    _train(_cfg(tiny_ckpt, tiny_data, run, **{**branch, "trainer.max_steps": 7}))
    assert _steps(run) == [6, 7]
    assert [r["step"] for r in _metrics(run / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6, 7]


def test_a_damaged_newest_checkpoint_falls_back_and_the_checked_one_is_loaded(
    tiny_ckpt, tiny_data, tmp_path, caplog
):
    run = tmp_path / "run"
    kw = {"trainer.max_steps": 4, "trainer.checkpoint_every_n_steps": 2, "trainer.keep_last_k": 3}
    _train(_cfg(tiny_ckpt, tiny_data, run, **kw))
    state_file = run / "checkpoints" / "step-000004" / "train_state.json"
    state_file.write_bytes(state_file.read_bytes()[:100])  # cut short, as a disk error would
    with caplog.at_level(logging.INFO, logger="ltxdist"):
        _train(_cfg(tiny_ckpt, tiny_data, run, **{**kw, "trainer.max_steps": 3}))
    assert f"{state_file}: damaged" in caplog.text
    assert f"resuming from {run / 'checkpoints' / 'step-000002'}" in caplog.text
    assert _steps(run) == [2, 3]
    (aside,) = (run / "abandoned").iterdir()
    assert _steps(aside) == [4], "the damaged checkpoint is kept for a look, out of the run's way"
    assert read_train_state(run / "checkpoints" / "step-000003").step == 3


def test_an_old_format_newest_checkpoint_says_how_to_convert_it(tiny_ckpt, tiny_data, tmp_path):
    old = tmp_path / "run" / "checkpoints" / "step-000004"
    old.mkdir(parents=True)
    (old / "state.json").write_text("{}")
    (old / "tensors.safetensors").write_bytes(b"x")
    (old / "meta.json").write_text(json.dumps({"complete": True, "format": 2}))
    with pytest.raises(LegacyCheckpointError, match=r"python -m ltxdist\.checkpoint\.convert .*step-000004"):
        _train(_cfg(tiny_ckpt, tiny_data, tmp_path / "run", **{"trainer.max_steps": 6}))


def test_force_trains_with_the_new_optimizer_settings_and_auto_with_the_checkpoints(
    tiny_ckpt, tiny_data, tmp_path
):
    run = tmp_path / "run"
    # A warm-up (the lr moves every step) independent of max_steps, which differs between the starts.
    warmup = {"optim.schedule.name": "constant", "optim.schedule.warmup_steps": 8, "optim.lr": 3e-3}
    kw = {"trainer.max_steps": 4, "trainer.checkpoint_every_n_steps": 2, **warmup}
    first = _cfg(tiny_ckpt, tiny_data, run, **{**kw, "trainer.max_steps": 2})
    _train(first)
    _train(_cfg(tiny_ckpt, tiny_data, run, **{**kw, "trainer.max_steps": 3}))  # auto: same settings
    forced = {**kw, "optim.lr": 1e-4, "optim.weight_decay": 0.5}
    _train(_cfg(tiny_ckpt, tiny_data, run, "run.resume=force", **forced))
    from ltxdist.training.optim import lr_multiplier

    schedule = first.optim.schedule  # every start has this schedule (max_steps goes to lr_multiplier)
    rows = {r["step"]: r["optim/lr"] for r in _metrics(run / "metrics.jsonl")}

    def expected(base: float, step: int) -> float:  # the lr a step trains with (the schedule at step - 1)
        return base * lr_multiplier(step - 1, cfg=schedule, base_lr=base, max_steps=4)

    # metrics.jsonl logs the lr each step trained at (not the next step's, set by the scheduler before
    # the step's record was written).
    assert rows[1] == pytest.approx(expected(3e-3, 1)) and rows[2] == pytest.approx(expected(3e-3, 2))
    assert rows[3] == pytest.approx(expected(3e-3, 3)), "auto continues the checkpoint's schedule"
    assert rows[4] == pytest.approx(expected(1e-4, 4)), "force trains with the config's optim.lr"
    saved = read_train_state(run / "checkpoints" / "step-000004")
    assert saved.optimizer[0]["weight_decay"] == 0.5 and saved.optimizer[0]["initial_lr"] == 1e-4
    assert saved.scheduler["base_lrs"] == [1e-4] and saved.scheduler["last_epoch"] == 4


def test_a_checkpoint_path_with_changed_optimizer_settings_trains_with_them(tiny_ckpt, tiny_data, tmp_path):
    """run.resume=<checkpoint dir> with another optim.lr continues like force: the change is logged and
    recorded, so the run must also train with it (it kept the checkpoint's rates)."""
    from ltxdist.training.optim import lr_multiplier

    run = tmp_path / "run"
    warmup = {"optim.schedule.name": "constant", "optim.schedule.warmup_steps": 8, "optim.lr": 3e-3}
    kw = {"trainer.max_steps": 2, "trainer.checkpoint_every_n_steps": 2, **warmup}
    first = _cfg(tiny_ckpt, tiny_data, run, **kw)
    _train(first)
    path = run / "checkpoints" / "step-000002"
    _train(
        _cfg(
            tiny_ckpt,
            tiny_data,
            run,
            f"run.resume={path}",
            **{**kw, "trainer.max_steps": 3, "optim.lr": 1e-4},
        )
    )
    schedule = first.optim.schedule  # the resumed start's too (only optim.lr and max_steps differ)
    rows = {r["step"]: r["optim/lr"] for r in _metrics(run / "metrics.jsonl")}
    assert rows[3] == pytest.approx(1e-4 * lr_multiplier(2, cfg=schedule, base_lr=1e-4, max_steps=3))
    assert read_train_state(run / "checkpoints" / "step-000003").scheduler["base_lrs"] == [1e-4]


def test_a_lora_file_newer_than_the_newest_checkpoint_is_no_abandoned_branch(tmp_path, caplog):
    """A kill between the LoRA export and the checkpoint write leaves lora_weights_step_N without
    step-N: an ordinary resume rewrites it, so nothing is moved aside and nothing is reported."""
    from ltxdist.training.run_dir import abandon_later_steps

    loras = lora_dir(tmp_path)
    loras.mkdir(parents=True)
    for step in (2, 3):
        (loras / f"lora_weights_step_{step:06d}.safetensors").write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="ltxdist"):
        assert abandon_later_steps(tmp_path, 2) is None
    assert _loras(loras) == ["lora_weights_step_000002.safetensors", "lora_weights_step_000003.safetensors"]
    assert not (tmp_path / "abandoned").exists() and "abandoned" not in caplog.text


def test_a_resume_under_another_micro_batch_layout_keeps_the_optimizer_steps_whole(
    tiny_ckpt, tiny_data, tmp_path
):
    """Resumed with batch 1 x accumulation 2 from a run of batch 2 x accumulation 1 (same samples per
    step): the data position converts to this layout's micro-batches, and so must Lightning's count,
    or every step after the resume takes a slipped share of the global batch. The resumed start runs
    under gradient accumulation, so its metrics.jsonl also shows one line per step there: the first
    micro-batch ends at the step resumed from, which has its line already."""
    common = {"trainer.checkpoint_every_n_steps": 3, "data.shuffle_buffer": 1}
    small = {"data.batch_size": 1, "trainer.accumulate_grad_batches": 2}
    reference = tmp_path / "reference"
    _train(_cfg(tiny_ckpt, tiny_data, reference, **common, **small, **{"trainer.max_steps": 5}))
    run = tmp_path / "run"
    big = {"data.batch_size": 2, "trainer.accumulate_grad_batches": 1}
    _train(_cfg(tiny_ckpt, tiny_data, run, **common, **big, **{"trainer.max_steps": 3}))
    _train(_cfg(tiny_ckpt, tiny_data, run, **common, **small, **{"trainer.max_steps": 5}))
    want = {r["step"]: r for r in _metrics(reference / "metrics.jsonl")}
    got = {r["step"]: r for r in _metrics(run / "metrics.jsonl")}
    # Each record's data position: the micro-batches consumed when the step ended (the slipped count
    # ended step 4 after 7, one sample short of its global batch, and every later step one off).
    assert [got[s]["batches_seen"] for s in (4, 5)] == [want[s]["batches_seen"] for s in (4, 5)] == [8, 10]
    rows = _metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert all("loss/total" in r for r in rows), "no empty record for the step the run resumed at"


def test_a_resume_that_would_split_an_optimizer_step_is_refused(tiny_ckpt, tiny_data, tmp_path):
    from ltxdist.training.run_dir import ResumeError

    run = tmp_path / "run"
    one = {"trainer.checkpoint_every_n_steps": 3, "data.batch_size": 1, "trainer.max_steps": 3}
    _train(_cfg(tiny_ckpt, tiny_data, run, **one))  # 3 micro-batches of one sample
    with pytest.raises(ResumeError, match=r"3 micro-batches .* trainer\.accumulate_grad_batches=2"):
        _train(
            _cfg(
                tiny_ckpt,
                tiny_data,
                run,
                **{**one, "trainer.max_steps": 4, "trainer.accumulate_grad_batches": 2},
            )
        )


def test_hfu_follows_the_activation_checkpointing_plan(tiny_ckpt, tiny_data, tmp_path, monkeypatch):
    """parallel.activation_checkpointing=every_k recomputes every other block: HFU counts that recompute
    although model.gradient_checkpointing is off (the exact count: tracking/test_flops.py)."""
    monkeypatch.setenv("LTXDIST_PEAK_TFLOPS", "1")
    run = tmp_path / "run"
    ac = ["parallel.activation_checkpointing=every_k", "parallel.activation_checkpointing_every=2"]
    _train(
        _cfg(tiny_ckpt, tiny_data, run, *ac, "model.gradient_checkpointing=false", **{"trainer.max_steps": 1})
    )
    (row,) = _metrics(run / "metrics.jsonl")
    assert row["perf/hfu"] > row["perf/mfu"]
