"""Mistakes found when a run starts, before the model loads or anything is written to the run folder:
a lora.targets pattern that matches nothing, and shards prepared for another strategy's references."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from e2e_utils import compose_train, train_in_process, train_overrides

from ltxdist.config.schema import ConfigError
from ltxdist.data.compat import ShardCompatibilityError


def _cfg(ckpt: Path, data: Path, run: Path, *raw: str):
    return compose_train([*train_overrides(ckpt, data, run, **{"trainer.max_steps": 1}), *raw])


_train = train_in_process


def _relabelled(data: Path, tmp_path: Path, **recorded: object) -> Path:
    """A copy of the synthetic shards whose index says how ltxdist-prepare made them."""
    copy = tmp_path / "shards"
    shutil.copytree(data, copy)
    index = json.loads((copy / "index.json").read_text())
    (copy / "index.json").write_text(json.dumps({**index, **recorded}))
    return copy


def test_a_target_pattern_that_matches_nothing_is_a_config_error_before_anything_is_written(
    tiny_ckpt, tiny_data, tmp_path
):
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"lora\.targets: pattern\(s\) \['to_k'\] match no Linear"):
        _train(_cfg(tiny_ckpt, tiny_data, run, "lora.targets=[to_k]"))
    assert not (run / "config.yaml").exists() and not (run / "checkpoints").exists()


def test_blocks_the_model_does_not_have_are_named_as_lora_blocks(tiny_ckpt, tiny_data, tmp_path):
    """lora.blocks=[99] on a 2-block model matched nothing, and the error blamed lora.targets."""
    with pytest.raises(
        ConfigError, match=r"lora\.blocks: \[99\] are not blocks of this model \(it has 0-1\)"
    ):
        _train(_cfg(tiny_ckpt, tiny_data, tmp_path / "run", "lora.blocks=[1,99]"))


@pytest.mark.parametrize(
    ("recorded", "overrides", "message"),
    [
        (
            {"strategy": "video_to_video", "reference_downscale_factor": 2},
            ["strategy=video_to_video"],
            r"downscaled by 2 .*reference_downscale_factor=1: set strategy\.reference_downscale_factor=2",
        ),
        (
            {"strategy": "standard"},
            ["strategy=video_to_video"],
            r"--strategy standard, which writes no references",
        ),
        (
            {"strategy": "standard"},
            ["strategy=audio_ref_only_ic"],
            r"re-run ltxdist-prepare with --strategy audio",
        ),
    ],
)
def test_shards_prepared_for_other_references_are_refused_at_start(
    tiny_ckpt, tiny_data, tmp_path, recorded, overrides, message
):
    shards = _relabelled(tiny_data, tmp_path, **recorded)
    run = tmp_path / "run"
    with pytest.raises(ShardCompatibilityError, match=message) as refused:
        _train(_cfg(tiny_ckpt, shards, run, *overrides))
    assert str(shards) in str(refused.value) and not (run / "config.yaml").exists()


def test_matching_references_and_plain_strategies_pass_the_start_checks(tiny_ckpt, tiny_data, tmp_path):
    from ltxdist.data.compat import check_data_fits_strategy

    shards = _relabelled(tiny_data, tmp_path, strategy="video_to_video", reference_downscale_factor=2)
    cfg = _cfg(
        tiny_ckpt,
        shards,
        tmp_path / "run",
        "strategy=video_to_video",
        "strategy.reference_downscale_factor=2",
    )
    check_data_fits_strategy(cfg.data, cfg.strategy)
    standard = _cfg(tiny_ckpt, shards, tmp_path / "run")  # a standard run may ignore the references
    check_data_fits_strategy(standard.data, standard.strategy)


def test_a_start_reads_the_base_header_and_the_train_state_once_and_builds_one_meta_model(
    tiny_ckpt, tiny_data, tmp_path, monkeypatch
):
    """Rank 0's start-up read model.checkpoint's header four times (the data fit, lora.targets, the run
    identity, then configure_model), built the meta model twice (lora.targets, configure_model) and read
    the chosen checkpoint's train_state.json four times (choosing it, the identity check, the record of
    a forced continuation, the load). Counted where every path meets: the layout check each header read
    does, ltx-core's configurator, TrainState.from_json, and the partial-file cleanup."""
    from collections import Counter

    from ltxdist._ltx_core import LTXModelConfigurator
    from ltxdist.checkpoint import TrainState
    from ltxdist.models import checkpoint_file
    from ltxdist.training import run_dir

    run = tmp_path / "run"
    steps = {"trainer.max_steps": 2, "trainer.checkpoint_every_n_steps": 2}
    _train(compose_train(train_overrides(tiny_ckpt, tiny_data, run, **steps)))
    counts: Counter[str] = Counter()

    def counted(key: str, call):
        def wrapper(*args, **kwargs):
            counts[key] += 1
            return call(*args, **kwargs)

        return wrapper

    def counted_classmethod(key: str, bound):  # `bound`: the original, bound to its class
        call = counted(key, bound)
        return classmethod(lambda cls, *args, **kwargs: call(*args, **kwargs))

    layout, cleanup = checkpoint_file.assumed_layout_problems, run_dir.remove_partial_checkpoints
    monkeypatch.setattr(checkpoint_file, "assumed_layout_problems", counted("header", layout))
    monkeypatch.setattr(run_dir, "remove_partial_checkpoints", counted("cleanup", cleanup))
    build = counted_classmethod("meta model", LTXModelConfigurator.from_config)
    monkeypatch.setattr(LTXModelConfigurator, "from_config", build)
    monkeypatch.setattr(TrainState, "from_json", counted_classmethod("train state", TrainState.from_json))
    # Forced on with another optim.lr, so every reader of the recorded identity runs; the same max_steps:
    # nothing to train, the start-up is what is counted.
    forced = compose_train(
        train_overrides(tiny_ckpt, tiny_data, run, **steps, **{"run.resume": "force", "optim.lr": 1e-3})
    )
    _train(forced)
    assert counts == {"header": 1, "meta model": 1, "train state": 2, "cleanup": 1}
