"""Issue 24, case 1: `run.resume=auto` resumes only the same run.

The same command with another `data.path` (a second character) used to continue the first run's
checkpoint, train 0 steps and hand back the first character's LoRA; a changed `optim.lr` was taken
silently; a changed `lora.rank` failed as a long size-mismatch traceback. Runs in this process on the
tiny model (no interpreter start-up)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from e2e_utils import compose_train, train_in_process, train_overrides
from hydra import compose, initialize_config_dir

from ltxdist.checkpoint.files import CheckpointMismatchError
from ltxdist.config.store import CONF_DIR, register_configs
from ltxdist.data.synthetic import write_synthetic_dataset
from ltxdist.training.run_dir import complete_checkpoints
from ltxdist.training.run_identity import (
    LoRAShapeMismatchError,
    ResumeRefusedError,
    compute_run_identity,
    recorded_identity,
)


def _cfg(ckpt: Path, data: Path, **extra: object):
    # No run.dir: the folder follows the experiment's run.name (runs/tiny_demo), as in the recipes'
    # full-scale commands that named no run.
    args = [a for a in train_overrides(ckpt, data, Path("unused"), **extra) if not a.startswith("run.dir=")]
    return compose_train(args)


_train = train_in_process


def _rewrite_train_state(checkpoint: Path, change) -> None:
    """`change` applied to the checkpoint's train_state.json (as a damaged or hand-edited file would read),
    with meta.json's inventory size to match (otherwise it reads as damaged and is skipped)."""
    state = json.loads((checkpoint / "train_state.json").read_text())
    change(state)
    (checkpoint / "train_state.json").write_text(json.dumps(state))
    meta = json.loads((checkpoint / "meta.json").read_text())
    meta["files"]["train_state.json"] = (checkpoint / "train_state.json").stat().st_size
    (checkpoint / "meta.json").write_text(json.dumps(meta))


def test_auto_resumes_only_the_same_run(tiny_ckpt, tiny_data, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    short = {"trainer.max_steps": 2, "trainer.checkpoint_every_n_steps": 2}
    first = _cfg(tiny_ckpt, tiny_data, **short)
    run = Path(first.run.dir)
    assert run == Path("runs/tiny_demo")
    _train(first)
    [(step, checkpoint)] = complete_checkpoints(run)
    assert step == 2
    saved = recorded_identity(checkpoint)
    assert saved is not None and saved["fields"] == compute_run_identity(first)["fields"]
    config_before = (run / "config.yaml").read_bytes()

    # A second character: same command, other data (and another learning rate).
    other_data = tmp_path / "bob"
    write_synthetic_dataset(other_data, tiny_ckpt, num_samples=4, samples_per_shard=4, seed=5)
    second = _cfg(tiny_ckpt, other_data, **short, **{"optim.lr": 1e-3})
    with pytest.raises(ResumeRefusedError) as refused:
        _train(second)
    message = str(refused.value)
    assert f"{checkpoint} belongs to a run with other settings" in message
    lines = {line.split()[0]: line for line in message.splitlines() if line.startswith("  ")}
    assert str(tiny_data) in lines["data"] and str(other_data) in lines["data"]
    assert "0.003" in lines["optim.lr"] and "0.001" in lines["optim.lr"]
    assert {"data", "optim.lr"} <= set(lines) and "lora.rank" not in lines
    assert "run.name=NEW" in message and "run.resume=force" in message
    assert (run / "config.yaml").read_bytes() == config_before, "a refused run leaves config.yaml alone"
    assert [s for s, _ in complete_checkpoints(run)] == [2]

    # run.resume=force continues on purpose; the run's log and its next checkpoint say what changed.
    forced = _cfg(tiny_ckpt, other_data, **{**short, "trainer.max_steps": 3}, **{"optim.lr": 1e-3})
    forced.run.resume = "force"
    with caplog.at_level(logging.WARNING, logger="ltxdist"):
        _train(forced)
    assert "run.resume=force: continuing" in caplog.text and "optim.lr" in caplog.text
    newest = complete_checkpoints(run)[-1][1]
    assert newest.name == "step-000003"
    history = recorded_identity(newest)["forced"]
    assert [h["at_checkpoint"] for h in history] == ["step-000002"]
    assert set(history[0]["changed"]) == {"data", "optim.lr"}
    assert "bob" in (run / "config.yaml").read_text()
    # ... and from then on the new settings are the run's own: auto resumes without complaint.
    assert recorded_identity(newest)["fields"] == compute_run_identity(forced)["fields"]

    # Another LoRA rank: refused by auto (naming the shape), one line under force.
    rank8 = _cfg(tiny_ckpt, other_data, **short, **{"optim.lr": 1e-3, "lora.rank": 8})
    with pytest.raises(ResumeRefusedError, match=r"(?s)lora\.rank +4 +-> +8.*another LoRA shape"):
        _train(rank8)
    rank8.run.resume = "force"
    with pytest.raises(LoRAShapeMismatchError) as shape:
        _train(rank8)
    assert "\n" not in str(shape.value) and "lora.rank 4 -> 8" in str(shape.value)
    # A checkpoint that records no identity: the adapters' shapes are checked on load.
    _rewrite_train_state(newest, lambda state: state["extra"].pop("run_identity"))
    rank8.run.resume = "auto"
    with pytest.raises(CheckpointMismatchError) as shape:
        _train(rank8)
    assert "\n" not in str(shape.value) and "lora.rank differs" in str(shape.value)


def test_identity_ignores_where_the_same_data_and_base_live(tiny_ckpt, tiny_data, tmp_path):
    """A base or dataset copied elsewhere (node-local disk on a cluster) is the same run."""

    data_copy = shutil.copytree(tiny_data, tmp_path / "staged")
    ckpt_copy = shutil.copy(tiny_ckpt, tmp_path / "base.safetensors")
    a = compute_run_identity(_cfg(tiny_ckpt, tiny_data))
    b = compute_run_identity(_cfg(Path(ckpt_copy), Path(data_copy)))
    assert a["fields"] == b["fields"]
    assert a["shown"]["data"] != b["shown"]["data"]  # the message still shows the paths
    index = json.loads((data_copy / "index.json").read_text())
    index["shards"] = index["shards"][:-1]
    (data_copy / "index.json").write_text(json.dumps(index))
    assert compute_run_identity(_cfg(tiny_ckpt, Path(data_copy)))["fields"]["data"] != a["fields"]["data"]


def test_a_finished_curriculum_stage_is_reused_only_with_its_settings(tiny_ckpt, tmp_path, monkeypatch):
    """A finished stage used to be skipped whatever changed; now its checkpoint's identity must match."""
    monkeypatch.chdir(tmp_path)  # the tiny curriculum writes its synthetic data under data/
    register_configs()

    def curriculum(*overrides: str):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(
                "train",
                overrides=[
                    "experiment=staged_curriculum_tiny",
                    f"model.checkpoint={tiny_ckpt}",
                    "trainer.progress_bar=false",
                    *overrides,
                ],
            )
        cfg.stages = cfg.stages[:2]
        for stage in cfg.stages:
            stage.max_steps = 2
        return cfg

    final = _train(curriculum())
    assert final.is_file()
    with pytest.raises(ResumeRefusedError, match=r"(?s)01-heads.*optim\.lr.*run\.name=NEW"):
        _train(curriculum("optim.lr=1e-3"))
    assert _train(curriculum("optim.lr=1e-3", "run.resume=force")) == final  # on purpose: reused


def test_training_longer_under_a_decaying_schedule_says_how_the_learning_rate_moves(
    tiny_ckpt, tiny_data, tmp_path, monkeypatch, caplog
):
    """trainer.max_steps is not part of the identity (training longer is the same run), but a linear
    schedule decays over it: the resumed run warns with the learning rates of the old and new schedule."""
    from ltxdist.training.run_identity import schedule_length_change

    monkeypatch.chdir(tmp_path)
    linear = {"optim.schedule.name": "linear", "optim.lr": 1e-3, "trainer.checkpoint_every_n_steps": 2}
    _train(_cfg(tiny_ckpt, tiny_data, **linear, **{"trainer.max_steps": 2}))
    [(_, checkpoint)] = complete_checkpoints(Path("runs/tiny_demo"))
    saved = recorded_identity(checkpoint)
    assert saved["horizon"] == {"trainer.max_steps": 2}

    longer = _cfg(tiny_ckpt, tiny_data, **linear, **{"trainer.max_steps": 4})
    # Step 3 of 4 on a linear decay to 0: lr x (1 - 2/4); the 2-step schedule had ended at 0.
    assert schedule_length_change(saved, longer, step=2) == (
        "trainer.max_steps 2 -> 4: the linear learning-rate schedule now decays over 4 steps, so step 3 "
        "trains at lr 0.0005 where the checkpoint's schedule had 0"
    )
    assert (
        schedule_length_change(saved, _cfg(tiny_ckpt, tiny_data, **linear, **{"trainer.max_steps": 2}), 2)
        == ""
    )
    constant = _cfg(
        tiny_ckpt, tiny_data, **{**linear, "optim.schedule.name": "constant"}, **{"trainer.max_steps": 4}
    )
    assert schedule_length_change(saved, constant, 2) == ""

    with caplog.at_level(logging.WARNING, logger="ltxdist"):
        _train(longer)
    assert "trainer.max_steps 2 -> 4: the linear learning-rate schedule" in caplog.text
    assert complete_checkpoints(Path("runs/tiny_demo"))[-1][0] == 4


def test_a_malformed_identity_record_resumes_unchecked_with_the_warning(
    tiny_ckpt, tiny_data, tmp_path, caplog
):
    """A train_state.json whose `extra` or run identity is not what ltxdist writes (damaged, edited by
    hand) resumes as a checkpoint without a record, with its warning, as an identity that is not an
    object always did; a part of the identity of another type, or `extra` not an object, used to stop
    the start-up with an AttributeError or TypeError that named no file. Forced on with another
    optim.lr, so every reader of the identity runs (the comparison, the record of the forced
    continuation, the schedule warning). Rank 0's decision alone (RunPreparation, before any model)."""
    from ltxdist.models.loader import MetaBase
    from ltxdist.training.checkpointing import ResumePlan
    from ltxdist.training.train import RunPreparation

    short = {"trainer.max_steps": 2, "trainer.checkpoint_every_n_steps": 2}
    run = tmp_path / "run"
    _train(compose_train(train_overrides(tiny_ckpt, tiny_data, run, **short)))

    def identity_part(key: str, value: object):
        return lambda state: state["extra"]["run_identity"].update({key: value})

    malformed = {
        "extra": lambda state: state.update(extra=["run_identity"]),
        "identity": lambda state: state["extra"].update(run_identity="abc"),
        **{key: identity_part(key, 5) for key in ("fields", "shown", "forced", "horizon")},
        # No "fields" (what the comparison compares) used to match every run: a silent "checked" resume.
        "no fields": lambda state: state["extra"]["run_identity"].pop("fields"),
        "empty identity": lambda state: state["extra"].update(run_identity={}),
        "empty fields": identity_part("fields", {}),
        "foreign fields": identity_part("fields", {"unrelated": 1}),
    }
    for name, change in malformed.items():
        copy = tmp_path / name
        shutil.copytree(run, copy)
        [(_, checkpoint)] = complete_checkpoints(copy)
        _rewrite_train_state(checkpoint, change)
        cfg = compose_train(
            train_overrides(tiny_ckpt, tiny_data, copy, **short, **{"run.resume": "force", "optim.lr": 1e-3})
        )
        plan = ResumePlan()
        preparation = RunPreparation(cfg, copy, None, {}, plan)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ltxdist"):
            preparation._decide_resume(MetaBase(tiny_ckpt).info)
        assert f"{checkpoint} records no run settings: not checked" in caplog.text, name
        assert plan.checkpoint == checkpoint and not plan.forced, name
