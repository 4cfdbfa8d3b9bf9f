"""Training refuses shards prepared for another base model version or with other encoders."""

import logging
import shutil

import pytest
from hydra import compose, initialize_config_dir

from ltxdist.config.schema import MixSourceConfig
from ltxdist.config.store import CONF_DIR, register_configs
from ltxdist.data.compat import (
    ShardCompatibilityError,
    check_data_fits_checkpoint,
    checkpoint_encoder_fingerprints,
)
from ltxdist.data.shards import ShardIndex, load_index
from ltxdist.models import read_checkpoint_info

register_configs()


def _cfg(ckpt, data, run_dir, *overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                f"model.checkpoint={ckpt}",
                f"data.path={data}",
                f"run.dir={run_dir}",
                "parallel.accelerator=cpu",
                "trainer.progress_bar=false",
                "trainer.max_steps=1",  # should the check ever be skipped, the test fails fast
                *overrides,
            ],
        )


def _copy_with_version(src, dst, version):
    shutil.copytree(src, dst)
    index = load_index(dst)
    index.model_version = version
    index.save(dst)
    return dst


def test_train_refuses_shards_of_another_model_version_before_building_anything(
    tiny_ckpt, tiny_data, tmp_path, caplog
):
    from ltxdist.training.train import train

    ltx2 = _copy_with_version(tiny_data, tmp_path / "ltx2_shards", "2.0.0")
    run_dir = tmp_path / "run"
    with pytest.raises(ShardCompatibilityError) as err:
        train(_cfg(tiny_ckpt, ltx2, run_dir))
    message = str(err.value)
    for part in (str(ltx2), "(data.path)", "model version 2.0.0", "is model version 2.3.0", str(tiny_ckpt)):
        assert part in message, (part, message)
    assert "data.allow_model_version_mismatch=true" in message
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.jsonl").exists()

    # The override lets it through (with a warning); a patch release is the same latent space.
    forced = _cfg(tiny_ckpt, ltx2, run_dir, "data.allow_model_version_mismatch=true")
    with caplog.at_level(logging.WARNING, logger="ltxdist.data.compat"):
        check_data_fits_checkpoint(forced.data, read_checkpoint_info(tiny_ckpt))
    assert "model version 2.0.0" in caplog.text
    patch = _copy_with_version(tiny_data, tmp_path / "patch_shards", "2.3.7")
    check_data_fits_checkpoint(_cfg(tiny_ckpt, patch, run_dir).data, read_checkpoint_info(tiny_ckpt))


def test_every_mixed_source_is_checked(tiny_ckpt, tiny_data, tmp_path):
    ltx2 = _copy_with_version(tiny_data, tmp_path / "ltx2_shards", "2.0.0")
    cfg = _cfg(tiny_ckpt, tiny_data, tmp_path / "run")
    alice, bob = MixSourceConfig("alice", str(tiny_data)), MixSourceConfig("bob", str(ltx2))
    cfg.data.mix = [alice, bob]
    with pytest.raises(ShardCompatibilityError, match=rf"{ltx2} \(data.mix\[1\] 'bob'\) holds latents"):
        check_data_fits_checkpoint(cfg.data, read_checkpoint_info(tiny_ckpt))
    cfg.data.mix = [alice]
    check_data_fits_checkpoint(cfg.data, read_checkpoint_info(tiny_ckpt))


def test_encoder_fingerprints_are_compared_with_the_checkpoint(tiny_model, tiny_ckpt, tmp_path):
    from ltxdist.encoders import encoder_fingerprints

    # What ltxdist-prepare records must be what training recomputes from the same checkpoint.
    recorded = encoder_fingerprints(tiny_model.checkpoint, tiny_model.gemma, 128)
    info = read_checkpoint_info(tiny_model.checkpoint)
    ours = checkpoint_encoder_fingerprints(info, recorded)
    assert ours == {k: recorded[k] for k in ("video_vae", "audio_vae", "text_connectors")}

    shards = tmp_path / "shards"
    shards.mkdir()
    ShardIndex(model_version="2.3.0", encoder_fingerprints=recorded).save(shards)
    cfg = _cfg(tiny_model.checkpoint, shards, tmp_path / "run")
    check_data_fits_checkpoint(cfg.data, read_checkpoint_info(tiny_model.checkpoint))
    # A transformer-only checkpoint holds no encoder weights: nothing to compare, accepted.
    check_data_fits_checkpoint(cfg.data, read_checkpoint_info(tiny_ckpt))

    ShardIndex(model_version="2.3.0", encoder_fingerprints={**recorded, "video_vae": "0" * 16}).save(shards)
    with pytest.raises(ShardCompatibilityError, match=r"other encoder weights .*\(video_vae: fingerprints"):
        check_data_fits_checkpoint(cfg.data, read_checkpoint_info(tiny_model.checkpoint))
    cfg.data.allow_encoder_mismatch = True
    check_data_fits_checkpoint(cfg.data, read_checkpoint_info(tiny_model.checkpoint))


def test_only_data_of_an_older_prepare_revision_gets_the_start_warning(tmp_path):
    """Synthetic shards and hand-made indexes record no preparation at all: no warning for them. Shards of
    this revision (or of a newer ltxdist) neither. Revision 1 is also what an index without one says."""
    from ltxdist.data.compat import DataSource, older_preparation_warning
    from ltxdist.data.prepare.revision import CHANGELOG, PREPARE_REVISION

    source = DataSource("data.path", tmp_path)

    def warning(**extra):
        return older_preparation_warning(source, ShardIndex(model_version="2.3.0", extra=extra))

    assert warning(synthetic=True) == "" and warning() == ""
    assert warning(prepare_run="abc", prepare_revision=PREPARE_REVISION) == ""
    assert warning(prepare_run="abc", prepare_revision=PREPARE_REVISION + 1) == ""
    unrecorded, one = warning(prepare_run="abc"), warning(prepare_run="abc", prepare_revision=1)
    assert unrecorded == one and f"{tmp_path} (data.path) was prepared by ltxdist-prepare revision 1;" in one
    # Every revision since the data's is named, one line each; the data's own is not.
    assert [line for line in one.splitlines() if line.startswith("  revision ")] == [
        f"  revision {r}: {CHANGELOG[r]}" for r in range(2, PREPARE_REVISION + 1)
    ]
    # The changelog has a line for every revision up to the current one.
    assert sorted(CHANGELOG) == list(range(1, PREPARE_REVISION + 1))
