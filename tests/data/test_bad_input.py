"""Each bad input of issue 3 gets a clear message naming the file or row; bad clips are skipped and
reported without shifting any other clip's caption; --strict stops; nothing already written is lost."""

import itertools
import json
import os

import pytest
from data_helpers import clip, prepare_opts, read_samples

from ltxdist.data.manifest import ManifestError
from ltxdist.data.prepare import PrepareError, prepare_dataset
from ltxdist.data.prepare.cli import main as prepare_main
from ltxdist.data.shards import load_index
from ltxdist.data.streaming import CachedLatentStream, ShardReadError, StreamPlan


@pytest.fixture(scope="module")
def messy(tmp_path_factory, tiny_model):
    """good, corrupt, truncated, too short, silent, uncaptioned, good -- in this (sorted) order."""
    raw = tmp_path_factory.mktemp("messy")
    clip(raw, "0_good.mp4", caption="first good clip", concept=0)
    (raw / "1_corrupt.mp4").write_bytes(b"\x00\x01garbage" * 500)
    (raw / "1_corrupt.txt").write_text("corrupt clip")
    full = clip(raw, "tmp_full.mp4", frames=17)
    (raw / "2_truncated.mp4").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    (raw / "2_truncated.txt").write_text("truncated clip")
    full.unlink()
    clip(raw, "3_short.mp4", frames=5, caption="five frames only")
    clip(raw, "4_silent.mp4", audio=False, caption="no sound here")
    clip(raw, "5_uncaptioned.mp4")
    clip(raw, "6_good.mp4", caption="second good clip", concept=1)
    out = tmp_path_factory.mktemp("messy_out")
    return raw, out, prepare_dataset(prepare_opts(raw, out, tiny_model, samples_per_shard=3))


def test_bad_clips_are_skipped_reported_and_named(messy):
    _, out, result = messy
    reasons = {s["where"]: s["reason"] for s in result.skipped}
    assert set(reasons) == {
        "1_corrupt.mp4",
        "2_truncated.mp4",
        "3_short.mp4",
        "4_silent.mp4",
        "5_uncaptioned.mp4",
    }
    assert "1_corrupt.mp4" in reasons["1_corrupt.mp4"] and "cannot open" in reasons["1_corrupt.mp4"]
    assert "2_truncated.mp4" in reasons["2_truncated.mp4"]
    assert "has 5 frames, shorter than every bucket (the shortest needs 9)" in reasons["3_short.mp4"]
    assert "no audio track, but audio is required (--audio required)" in reasons["4_silent.mp4"]
    assert "missing caption file 5_uncaptioned.txt" in reasons["5_uncaptioned.mp4"]
    report = json.loads((out / "prepare_report.json").read_text())
    assert len(report["skipped"]) == 5 and report["num_samples"] == 2


def test_skipped_clips_do_not_shift_captions(messy):
    _, out, _ = messy
    samples = read_samples(out)
    assert sorted(samples) == ["row00000000", "row00000006"]
    assert samples["row00000000"].meta["caption"] == "first good clip"
    assert samples["row00000000"].meta["source"].endswith("0_good.mp4")
    assert samples["row00000006"].meta["caption"] == "second good clip"
    assert samples["row00000006"].meta["source"].endswith("6_good.mp4")


def test_audio_optional_keeps_silent_clip(tmp_path, tiny_model):
    clip(tmp_path / "raw", "silent.mp4", audio=False, caption="quiet")
    prepare_dataset(prepare_opts(tmp_path / "raw", tmp_path / "out", tiny_model, audio="optional"))
    (sample,) = read_samples(tmp_path / "out").values()
    assert "audio_latents" not in sample.tensors


def test_missing_reference_file_names_row_column_and_path(tmp_path, tiny_model):
    clip(tmp_path, "t.mp4")
    (tmp_path / "d.jsonl").write_text(
        json.dumps({"video": "t.mp4", "caption": "x", "reference_video": "gone.mp4"})
    )
    result = prepare_dataset(
        prepare_opts(tmp_path / "d.jsonl", tmp_path / "out", tiny_model, strategy="video_to_video")
    )
    (skip,) = result.skipped
    assert "d.jsonl line 1: reference_video file not found" in skip["reason"] and "gone.mp4" in skip["reason"]
    (tmp_path / "e.jsonl").write_text(json.dumps({"video": "t.mp4", "caption": "x"}))
    result = prepare_dataset(
        prepare_opts(tmp_path / "e.jsonl", tmp_path / "out2", tiny_model, strategy="audio_ref_only_ic")
    )
    assert (
        "column 'reference_audio' is required by --strategy audio_ref_only_ic" in result.skipped[0]["reason"]
    )


def test_unknown_column_stops_before_writing(tmp_path, tiny_model):
    clip(tmp_path, "t.mp4")
    (tmp_path / "d.csv").write_text("video_path,caption,captoin\nt.mp4,x,y\n")
    with pytest.raises(ManifestError, match=r"d.csv line 2: unknown column.*'captoin'"):
        prepare_dataset(prepare_opts(tmp_path / "d.csv", tmp_path / "out", tiny_model))
    assert not list(tmp_path.rglob("*.tar")) and not list(tmp_path.rglob("index.json"))


def test_strict_stops_at_the_bad_row_and_keeps_finished_shards(tmp_path, tiny_model):
    raw = tmp_path / "raw"
    clip(raw, "a.mp4", caption="a")
    clip(raw, "b.mp4", caption="b")
    clip(raw, "c.mp4", frames=5, caption="too short")
    clip(raw, "d.mp4", caption="d")
    with pytest.raises(PrepareError, match=r"c.mp4: .*shorter than every bucket.*--strict"):
        prepare_dataset(prepare_opts(raw, tmp_path / "out", tiny_model, samples_per_shard=1, strict=True))
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tar")) == [
        "shard-000000.tar",
        "shard-000001.tar",
    ]
    assert not (tmp_path / "out" / "index.json").exists()


@pytest.mark.parametrize(
    ("buckets", "message"),
    [
        ("100x64x17", "--buckets: bucket '100x64x17': width and height must be positive multiples of 32"),
        ("64x64x16", r"--buckets: bucket '64x64x16': frames must be 8n+1"),
    ],
)
def test_bad_bucket_is_a_cli_error_naming_the_flag(tmp_path, tiny_model, capsys, buckets, message):
    with pytest.raises(SystemExit) as exit_info:
        prepare_main(
            [
                str(tmp_path),
                "--out",
                str(tmp_path / "o"),
                "--checkpoint",
                str(tiny_model.checkpoint),
                "--gemma",
                str(tiny_model.gemma),
                "--buckets",
                buckets,
            ]
        )
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.fixture()
def synthetic_shards(tmp_path, tiny_model):
    """The training reader does not care who wrote the shards: synthetic ones are quicker to make."""
    from ltxdist.data.synthetic import write_synthetic_dataset

    write_synthetic_dataset(tmp_path / "shards", tiny_model.checkpoint, num_samples=8, samples_per_shard=4)
    return tmp_path / "shards"


def _truncate(path, size):
    path.write_bytes(path.read_bytes()[:size])


def test_truncated_shard_at_training_time_names_the_shard(synthetic_shards):
    shard = synthetic_shards / load_index(synthetic_shards).shards[0]["name"]
    _truncate(shard, shard.stat().st_size // 2)
    stream = CachedLatentStream(synthetic_shards, StreamPlan(batch_size=1, seed=0))
    with pytest.raises(ShardReadError, match=f"{shard}.*truncated"):
        list(itertools.islice(stream.iter_batches(), 8))


def test_shard_cut_at_a_member_boundary_is_detected(synthetic_shards):
    import tarfile

    shard = synthetic_shards / load_index(synthetic_shards).shards[0]["name"]
    with tarfile.open(shard) as tar:
        members = tar.getmembers()
    assert len(members) == 8
    _truncate(shard, members[2].offset)  # keep exactly the first sample's two members
    stream = CachedLatentStream(synthetic_shards, StreamPlan(batch_size=1, seed=0))
    with pytest.raises(ShardReadError, match=str(shard)):
        list(itertools.islice(stream.iter_batches(), 8))


def test_prepare_has_no_silent_defaults(tmp_path, tiny_model, capsys):
    """Issue 24, case 7 (preparation): without --buckets the tiny model's 64x64x17 bucket was used, which
    --help did not show; a run that wrote 0 samples exited 0. Now --buckets is required (--help shows
    real LTX-2.3 buckets) and an empty result is an error."""
    from ltxdist.data.prepare.cli import build_parser

    help_text = " ".join(build_parser().format_help().split())
    assert "768x448x121" in help_text and "960x544x49" in help_text
    base = ["--out", str(tmp_path / "out"), "--checkpoint", str(tiny_model.checkpoint)]
    base += ["--gemma", str(tiny_model.gemma), "--no-progress", "--device", "cpu"]
    (tmp_path / "rows.jsonl").write_text(json.dumps({"video": "missing.mp4", "caption": "gone"}))
    with pytest.raises(SystemExit) as exit_info:
        prepare_main([str(tmp_path / "rows.jsonl"), *base])
    assert exit_info.value.code == 2 and "needs --buckets" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert prepare_main([str(tmp_path / "rows.jsonl"), *base, "--buckets", "64x64x17"]) == 1
    err = capsys.readouterr().err
    assert "holds no samples: every one of its 1 rows was skipped" in err and "missing.mp4" in err


def test_a_file_name_that_is_not_utf8_is_prepared_and_named(tmp_path, tiny_model, capsys, caplog):
    """A Latin-1 file name (bytes b'caf\\xe9' on Linux) reaches Python as surrogate escapes, which no
    UTF-8 write accepts: the sample's JSON record raised UnicodeEncodeError and stopped the whole run
    without naming the file. Now the clip is prepared and its name is recorded as caf\\xe9."""
    raw, out = tmp_path / "raw", tmp_path / "out"
    clip(raw, "good.mp4", caption="plain name", concept=0)
    clip(raw, "latin1.mp4", caption="latin-1 name", concept=1)
    (raw / "broken.mp4").write_bytes(b"\x00garbage" * 100)
    (raw / "broken.txt").write_text("a corrupt clip")
    for stem, new_stem in ((b"latin1", b"caf\xe9"), (b"broken", b"cass\xe9")):
        for ext in (b".mp4", b".txt"):
            os.rename(os.fsencode(raw) + b"/" + stem + ext, os.fsencode(raw) + b"/" + new_stem + ext)
    argv = [str(raw), "--out", str(out), "--checkpoint", str(tiny_model.checkpoint)]
    argv += ["--gemma", str(tiny_model.gemma), "--buckets", "64x64x17", "--no-progress"]
    assert prepare_main(argv) == 0
    samples = {s.meta["caption"]: s for s in read_samples(out).values()}
    assert samples.keys() == {"plain name", "latin-1 name"}
    assert samples["latin-1 name"].meta["source"] == f"{raw}/caf\\xe9.mp4"
    printed = capsys.readouterr().out
    assert "skipped cass\\xe9.mp4: " in printed and "cannot open as media" in printed
    assert "skipped cass\\xe9.mp4: cass\\xe9.mp4" not in printed  # where it is, once
    (skipped,) = json.loads((out / "prepare_report.json").read_text())["skipped"]
    assert skipped["where"] == "cass\\xe9.mp4" and skipped["source"] == f"{raw}/cass\\xe9.mp4"
    # The log too (a UTF-8 stream: a surrogate there is a logging error, and breaks pytest-xdist).
    assert any("cass\\xe9.mp4" in r.getMessage() for r in caplog.records)
    for record in caplog.records:
        record.getMessage().encode("utf-8")


def test_a_lone_surrogate_in_a_json_manifest_skips_its_row_naming_where(tmp_path, tiny_model, capsys):
    """JSON can spell half of a UTF-16 pair ("\\ud83d" without its partner: an emoji cut in two). In a
    caption it stopped the whole run with the tokenizer's TypeError, in a file name with os.stat's
    UnicodeEncodeError, neither naming the row. Now the row is skipped like any bad row, naming the
    row, the column, the surrogate and where it is."""
    raw, out = tmp_path / "raw", tmp_path / "out"
    clip(raw, "good.mp4", caption="unused", concept=0)
    clip(raw, "cut.mp4", caption="unused", concept=1)
    # Written as the JSON text a broken exporter writes: the escapes are in the file, not Python's.
    (raw / "dataset.jsonl").write_text(
        '{"video": "good.mp4", "caption": "a dog runs"}\n'
        '{"video": "cut.mp4", "caption": "a cat \\ud83d smiles"}\n'
        '{"video": "cut\\udfff.mp4", "caption": "a bad name"}\n'
    )
    argv = [str(raw / "dataset.jsonl"), "--out", str(out), "--checkpoint", str(tiny_model.checkpoint)]
    argv += ["--gemma", str(tiny_model.gemma), "--buckets", "64x64x17", "--no-progress"]
    assert prepare_main(argv) == 0
    assert [s.meta["caption"] for s in read_samples(out).values()] == ["a dog runs"]
    skipped = json.loads((out / "prepare_report.json").read_text())["skipped"]
    assert [(s["row"], s["where"]) for s in skipped] == [
        (1, "dataset.jsonl line 2"),
        (2, "dataset.jsonl line 3"),
    ]
    assert (
        "caption holds a lone UTF-16 surrogate \\ud83d at character 7 (after 'a cat ')"
        in skipped[0]["reason"]
    )
    assert "video holds a lone UTF-16 surrogate \\udfff at character 4 (after 'cut')" in skipped[1]["reason"]
    printed = capsys.readouterr().out
    assert "skipped dataset.jsonl line 2: caption holds a lone UTF-16 surrogate" in printed
    # Not UTF-8 on the command line (surrogate escapes): every caption would fail; refused up front.
    with pytest.raises(SystemExit) as exit_info:
        prepare_main([*argv, "--lora-trigger", "sks\udcff"])
    assert (
        exit_info.value.code == 2 and "--lora-trigger 'sks\\xff' is not UTF-8 text" in capsys.readouterr().err
    )


def test_decode_stops_reading_once_it_has_its_samples(synthetic_shards, tiny_model, tmp_path):
    """`--decode --num-samples N` read every shard to the end (the break left only the inner loop):
    minutes on a large dataset, and an error from a shard it never needed. A later shard that cannot
    be read must now not matter."""
    from ltxdist.data.prepare.decode import decode_shards

    later = synthetic_shards / load_index(synthetic_shards).shards[1]["name"]
    later.write_bytes(b"not a tar at all" * 64)
    written = decode_shards(
        synthetic_shards, tiny_model.checkpoint, tmp_path / "videos", num_samples=1, progress=False
    )
    assert [p.name for p in written] == ["sample-000000.mp4"] and written[0].is_file()


def test_an_unwritable_out_or_a_full_disk_is_an_error_line(tmp_path, tiny_model, capsys, monkeypatch):
    """Only FileNotFoundError was caught: an --out that cannot be created, or a full disk while a shard
    is written (AtomicWriteError, an OSError), ended in a traceback instead of the one error line."""
    import errno

    from ltxdist.io import AtomicWriteError

    clip(tmp_path / "raw", "c.mp4", caption="a clip")
    (tmp_path / "a_file").write_text("not a directory")
    args = ["--checkpoint", str(tiny_model.checkpoint), "--gemma", str(tiny_model.gemma)]
    args += ["--buckets", "64x64x17", "--no-progress", str(tmp_path / "raw")]
    assert prepare_main([*args, "--out", str(tmp_path / "a_file" / "shards")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ltxdist-prepare: error: ") and f"{tmp_path / 'a_file'}" in err

    def disk_full(path, samples):
        raise AtomicWriteError(errno.ENOSPC, path, "No space left on device")

    monkeypatch.setattr("ltxdist.data.prepare.pipeline.write_shard", disk_full)
    assert prepare_main([*args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.splitlines()[-1]  # after the encoders' loading bars
    assert (
        err.startswith("ltxdist-prepare: error: ") and "could not write " in err and "shard-000000.tar" in err
    )
    assert "the disk or quota is full" in err
    # --decode of a directory that is no prepared dataset: the same one line.
    decode = ["--decode", str(tmp_path / "raw"), "--checkpoint", str(tiny_model.checkpoint)]
    assert prepare_main([*decode, "--out", str(tmp_path / "videos")]) == 2
    assert capsys.readouterr().err.startswith(f"ltxdist-prepare: error: no index.json in {tmp_path / 'raw'}")
