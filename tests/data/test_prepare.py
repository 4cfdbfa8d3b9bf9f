import itertools
import json
import logging
import os
import shutil
import subprocess

import pytest
import torch
from data_helpers import clip, prepare_opts, read_samples
from e2e_utils import compose_train, prepare_command, train_in_process, train_overrides

from ltxdist.data.media import read_frames
from ltxdist.data.prepare import PrepareError, prepare_dataset
from ltxdist.data.prepare.cli import main as prepare_main
from ltxdist.data.shards import load_empty_caption, load_index
from ltxdist.data.streaming import CachedLatentStream, StreamPlan
from ltxdist.data.synthetic import latent_shape
from ltxdist.encoders import encoder_fingerprints
from ltxdist.models.tiny_checkpoint import write_random_checkpoint


def _clips(directory):
    """Raw clips of different sizes, lengths and frame rates, one without audio."""
    clip(directory, "a.mp4", width=64, height=64, frames=17, caption="alpha square", concept=0)
    clip(directory, "b.mp4", width=128, height=72, frames=25, fps=25.0, caption="beta square", concept=1)
    clip(directory, "c.mp4", width=48, height=96, frames=20, caption="gamma square", concept=2)
    clip(directory, "d.mp4", width=64, height=64, frames=12, caption="delta square", concept=3)
    clip(directory, "e.mp4", width=64, height=64, frames=17, audio=False, caption="silent square", concept=0)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_model):
    raw = tmp_path_factory.mktemp("raw")
    _clips(raw)
    out = tmp_path_factory.mktemp("shards")
    result = prepare_dataset(
        prepare_opts(raw, out, tiny_model, samples_per_shard=2, lora_trigger="sks", audio="optional")
    )
    return raw, out, result


def test_folder_to_shards(prepared, encoders):
    raw, out, result = prepared
    assert result.complete and result.encoded == 5 and not result.skipped
    index = load_index(out)
    raw_index = json.loads((out / "index.json").read_text())
    assert index.model_version == "2.3.0" and raw_index["text_tokens"] == 128 and raw_index["complete"]
    assert set(index.encoder_fingerprints) == {"video_vae", "audio_vae", "text_connectors", "gemma"}
    assert index.encoder_fingerprints == encoders.fingerprints
    assert index.buckets == {"64x64x17": 2, "96x64x17": 1, "64x96x17": 1, "64x64x9": 1}
    samples = read_samples(out)
    by_source = {os.path.basename(s.meta["source"]): s for s in samples.values()}
    expected_bucket = {
        "a.mp4": "64x64x17",
        "b.mp4": "96x64x17",
        "c.mp4": "64x96x17",
        "d.mp4": "64x64x9",
        "e.mp4": "64x64x17",
    }
    for name, sample in by_source.items():
        # Each clip keeps its own caption (trigger prepended) and gets its bucket's latent shape.
        caption = (raw / name).with_suffix(".txt").read_text().strip()
        assert sample.meta["caption"] == f"sks {caption}"
        assert sample.bucket == expected_bucket[name]
        assert tuple(sample.tensors["video_latents"].shape) == latent_shape(sample.bucket)
        assert sample.tensors["video_latents"].dtype == torch.bfloat16
        assert sample.tensors["video_context"].shape == (128, 64) and sample.tensors["context_mask"].all()
        if name == "e.mp4":
            assert "audio_latents" not in sample.tensors
        else:
            frames = int(sample.bucket.split("x")[2])
            assert sample.tensors["audio_latents"].shape == (8, round(frames / sample.meta["fps"] * 25), 16)
    # The cached latents are the real encoder's output for the first F frames, resized and cropped.
    a = by_source["a.mp4"]
    direct = encoders.video.encode(read_frames(raw / "a.mp4", 17, 64, 64)).to(torch.bfloat16)
    assert torch.equal(a.tensors["video_latents"], direct)
    assert torch.equal(
        a.tensors["video_context"], encoders.text.encode("sks alpha square").video_context.bfloat16()
    )
    empty = load_empty_caption(out)
    assert empty["video_context"].shape == (128, 64) and empty["audio_context"].shape == (128, 32)


def test_training_reader_streams_prepared_shards(prepared):
    _, out, _ = prepared
    stream = CachedLatentStream(out, StreamPlan(batch_size=1, seed=0))
    ids = [b["ids"][0] for b in itertools.islice(stream.iter_batches(), 5)]
    assert sorted(ids) == [f"row{i:08d}" for i in range(5)]


def test_a_rerun_removes_what_a_killed_run_left_half_written(prepared, tiny_model, tmp_path):
    """A kill mid-write leaves `<file>.tmp-*` siblings (ltxdist/io.py): the next run removes its own
    before any work, and touches nothing else."""
    raw, done, _ = prepared
    out = tmp_path / "out"
    shutil.copytree(done, out)
    stale = ["shard-000001.tar.tmp-k1ll3d", "shard-000002.unit.json.tmp-x", "index.json.tmp-abc"]
    for name in stale:
        (out / name).write_bytes(b"half written")
    (out / "notes.tmp-mine").write_text("not ltxdist's")
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar")}
    again = prepare_dataset(
        prepare_opts(raw, out, tiny_model, samples_per_shard=2, lora_trigger="sks", audio="optional")
    )
    assert again.complete and again.encoded == 0
    assert not [name for name in stale if (out / name).exists()]
    assert (out / "notes.tmp-mine").exists()
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar")} == before


def test_rerun_resumes_and_refuses_stale_caches(tmp_path, tiny_model):
    raw, out = tmp_path / "raw", tmp_path / "out"
    for i in range(3):
        clip(raw, f"c{i}.mp4", caption=f"clip {i}", concept=i)
    assert prepare_dataset(prepare_opts(raw, out, tiny_model, samples_per_shard=1)).encoded == 3
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    again = prepare_dataset(prepare_opts(raw, out, tiny_model, samples_per_shard=1))
    assert again.encoded == 0 and again.resumed_units == 3 and again.complete
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")} == mtimes
    # An interrupted unit (tar renamed into place, record not yet written) and a deleted shard are redone.
    (out / "shard-000001.unit.json").unlink()
    (out / "shard-000002.tar").unlink()
    redo = prepare_dataset(prepare_opts(raw, out, tiny_model, samples_per_shard=1))
    assert redo.encoded == 2 and (out / "shard-000000.tar").stat().st_mtime_ns == mtimes["shard-000000.tar"]
    # Other encoder weights or model version: refused unless --overwrite.
    other = write_random_checkpoint(tmp_path / "other.safetensors", seed=7, with_encoders=True)
    newer = write_random_checkpoint(
        tmp_path / "newer.safetensors", seed=0, with_encoders=True, model_version="2.4.0"
    )
    with pytest.raises(PrepareError, match=r"encoder fingerprints changed .*video_vae.*--overwrite"):
        prepare_dataset(
            prepare_opts(raw, out, type(tiny_model)(other, tiny_model.gemma), samples_per_shard=1)
        )
    with pytest.raises(PrepareError, match=r"model version 2.3.0 -> 2.4.0"):
        prepare_dataset(
            prepare_opts(raw, out, type(tiny_model)(newer, tiny_model.gemma), samples_per_shard=1)
        )
    # Other options (a trigger word now) change every shard: refused too, naming the option.
    with pytest.raises(PrepareError, match=r"preparation options changed \(lora_trigger: None -> sks\)"):
        prepare_dataset(prepare_opts(raw, out, tiny_model, samples_per_shard=1, lora_trigger="sks"))
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-00000[0].tar")} == {
        "shard-000000.tar": mtimes["shard-000000.tar"]
    }  # nothing lost by a refused run
    over = prepare_dataset(
        prepare_opts(raw, out, type(tiny_model)(other, tiny_model.gemma), samples_per_shard=1, overwrite=True)
    )
    assert over.encoded == 3 and over.replaced_units == 3
    assert load_index(out).encoder_fingerprints == encoder_fingerprints(other, tiny_model.gemma, 128)


def test_prepare_is_incremental(tmp_path, tiny_model):
    """Issue 24, cases 4 and 5. After --strict stopped at a bad row, fixing that row was refused until
    --overwrite, which then re-encoded every shard; --overwrite after a kill redid finished, up-to-date
    shards. Now shards are keyed by the rows and options they hold: a fixed or appended row re-encodes
    only its unit, with no flag, and --overwrite replaces only shards whose inputs changed."""
    raw, out = tmp_path / "raw", tmp_path / "out"
    for i in range(3):
        clip(raw, f"c{i}.mp4", caption=f"clip {i}", concept=i)
    manifest = raw / "dataset.jsonl"
    rows = [
        {"video": "c0.mp4", "caption": "clip 0"},
        {"video": "typo.mp4", "caption": "clip 1"},
        {"video": "c2.mp4", "caption": "clip 2"},
    ]

    def prepare(**kw):
        manifest.write_text("\n".join(json.dumps(r) for r in rows))
        return prepare_dataset(
            prepare_opts(manifest, out, tiny_model, samples_per_shard=1, strict=True, **kw)
        )

    def stamps():
        return {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar")}

    with pytest.raises(PrepareError, match="--strict: stopping; finished shards are kept"):
        prepare()
    kept = stamps()
    assert list(kept) == ["shard-000000.tar"]
    rows[1]["video"] = "c1.mp4"  # the row fixed: the finished shard stays, the rest is encoded
    fixed = prepare()
    assert (fixed.encoded, fixed.resumed_units, fixed.replaced_units, fixed.complete) == (2, 1, 0, True)
    assert stamps()["shard-000000.tar"] == kept["shard-000000.tar"]
    kept = stamps()
    rows[2]["caption"] = "clip two"  # a caption corrected: only its unit
    again = prepare()
    assert (again.encoded, again.replaced_units) == (1, 1)
    assert {k: v for k, v in stamps().items() if v == kept[k]}.keys() == {
        "shard-000000.tar",
        "shard-000001.tar",
    }
    assert read_samples(out)["row00000002"].meta["caption"] == "clip two"
    rows.append({"video": "c0.mp4", "caption": "clip 3"})  # a row appended: only the new unit
    appended = prepare()
    assert (appended.encoded, appended.resumed_units, appended.replaced_units) == (1, 3, 0)
    assert load_index(out).num_samples == 4
    # A kill between a shard's rename and its record, then --overwrite: only that unit is redone.
    kept = stamps()
    (out / "shard-000003.unit.json").unlink()
    over = prepare(overwrite=True)
    assert (over.encoded, over.resumed_units) == (1, 3)
    assert {k for k, v in stamps().items() if v == kept[k]} == {f"shard-00000{i}.tar" for i in range(3)}
    # Another manifest pointed at the same --out is not taken for an edit: refused without --overwrite.
    kept = stamps()
    rows[:] = [{"video": f"c{i}.mp4", "caption": f"another dataset {i}"} for i in range(4)]
    with pytest.raises(PrepareError, match="none of them made from any row of this manifest"):
        prepare()
    assert stamps() == kept and load_index(out).num_samples == 4


def test_ranks_split_the_manifest_and_last_one_writes_the_index(tmp_path, tiny_model):
    raw = tmp_path / "raw"
    for i in range(5):
        clip(raw, f"c{i}.mp4", caption=f"clip {i}", concept=i)
    out = tmp_path / "out"
    r1 = prepare_dataset(prepare_opts(raw, out, tiny_model, samples_per_shard=1, rank=1, world_size=2))
    assert not r1.complete and r1.encoded == 2 and not (out / "index.json").exists()
    assert sorted(p.name for p in out.glob("*.tar")) == ["shard-000001.tar", "shard-000003.tar"]
    r0 = prepare_dataset(prepare_opts(raw, out, tiny_model, samples_per_shard=1, rank=0, world_size=2))
    assert r0.complete and r0.encoded == 3
    assert sorted(read_samples(out)) == [f"row{i:08d}" for i in range(5)]
    # A rerun with another world size finds everything done.
    assert (
        prepare_dataset(prepare_opts(raw, out, tiny_model, samples_per_shard=1, rank=2, world_size=3)).encoded
        == 0
    )


def test_two_concurrent_processes_via_torchrun_env(tmp_path, tiny_model):
    raw = tmp_path / "raw"
    for i in range(3):
        clip(raw, f"c{i}.mp4", caption=f"clip {i}", concept=i)
    out = tmp_path / "out"
    args = prepare_command(raw, out, tiny_model.checkpoint, tiny_model.gemma)
    procs = [
        subprocess.Popen(
            args,
            env={**os.environ, "RANK": str(r), "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert "rank 0/2" in outputs[0] and "rank 1/2" in outputs[1]
    assert load_index(out).num_samples == 3


def test_rank_and_world_size_come_from_the_launcher_not_the_allocation():
    """srun's world is the job step's SLURM_STEP_NUM_TASKS. SLURM_NTASKS was used, which a batch
    script has too (the allocation's task count, with SLURM_PROCID=0) while it runs as one process."""
    from ltxdist.data.prepare.cli import env_launch, resolve_launch

    def launch(env):
        got = env_launch(env)
        return got.rank, got.world_size

    batch_script = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_PROCID": "0"}
    srun_task = {**batch_script, "SLURM_PROCID": "2", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "4"}
    assert launch({}) == launch(batch_script) == (0, 1)
    assert launch(srun_task) == (2, 4) and "srun" in env_launch(srun_task).source
    assert launch({**srun_task, "RANK": "5", "WORLD_SIZE": "8"}) == (5, 8)  # torchrun inside srun
    with pytest.raises(ValueError, match="RANK is set in the environment but WORLD_SIZE is not"):
        env_launch({"RANK": "1"})
    with pytest.raises(ValueError, match="WORLD_SIZE='two' in the environment is not a whole number"):
        env_launch({"RANK": "1", "WORLD_SIZE": "two"})
    flags = resolve_launch(None, 1, {"RANK": "0", "WORLD_SIZE": "2"})
    assert (flags.rank, flags.world_size, flags.source) == (
        0,
        1,
        "--world-size, RANK / WORLD_SIZE, set by torchrun",
    )


def test_a_process_left_with_a_share_says_so_and_a_batch_script_prepares_all(
    tmp_path, tiny_model, monkeypatch, capsys
):
    """A process given a rank by its environment prepared its share and said only "rank 0/2: encoded
    1 samples": with a RANK / WORLD_SIZE left in the environment (or, before, an sbatch script's
    SLURM_NTASKS) the dataset silently stayed incomplete. It now says which shards are missing, whose
    they are and where its rank came from; a batch script without srun prepares everything."""
    raw, out = tmp_path / "raw", tmp_path / "out"
    for i in range(2):
        clip(raw, f"c{i}.mp4", caption=f"clip {i}", concept=i)
    argv = [str(raw), "--out", str(out), "--checkpoint", str(tiny_model.checkpoint), "--device", "cpu"]
    argv += ["--gemma", str(tiny_model.gemma), "--buckets", "64x64x17", "--samples-per-shard", "1"]
    for key in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert prepare_main([*argv, "--no-progress"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert f"{out}: 1 of 2 shards are not finished yet" in printed
    assert "rank 0 of 2 (from RANK / WORLD_SIZE, set by torchrun)" in printed
    assert "with --world-size 1" in printed and not (out / "index.json").exists()
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setenv("SLURM_NTASKS", "2")  # sbatch --ntasks=2, the script itself: one process
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert prepare_main([*argv, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "rank 0/1: encoded 1 samples, 1 shards already done" in printed and "not finished" not in printed
    assert load_index(out).num_samples == 2


def test_reference_strategies(tmp_path, tiny_model):
    raw = tmp_path / "raw"
    clip(raw, "t.mp4", width=128, height=64, frames=17)
    clip(raw, "r.mp4", width=128, height=64, frames=20)
    clip(raw, "short.mp4", width=128, height=64, frames=9)
    clip(raw, "img.mp4", width=64, height=64, frames=1, audio=False)
    (raw / "v2v.jsonl").write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"video": "t.mp4", "caption": "with reference", "reference_video": "r.mp4"},
                {"video": "t.mp4", "caption": "looped still", "reference_image": "img.mp4"},
                {"video": "t.mp4", "caption": "too short a reference", "reference_video": "short.mp4"},
            ]
        )
    )
    out = tmp_path / "v2v"
    result = prepare_dataset(
        prepare_opts(
            raw / "v2v.jsonl",
            out,
            tiny_model,
            buckets="128x64x17",
            strategy="video_to_video",
            reference_downscale_factor=2,
        )
    )
    samples = read_samples(out)
    ref = samples["row00000000"].tensors["reference_video_latents"]
    assert ref.shape == (128, 3, 1, 2)  # 64x32 reference: W, H halved, same 17 frames
    assert samples["row00000000"].meta["reference_downscale_factor"] == 2
    still = samples["row00000001"].tensors["reference_video_latents"]
    assert still.shape == (128, 3, 1, 2)
    assert [s["row"] for s in result.skipped] == [2] and "fewer than the 17" in result.skipped[0]["reason"]

    (raw / "id.csv").write_text(
        "video,caption,reference_audio,reference_image\nt.mp4,speaker one,r.mp4,img.mp4\n"
    )
    out = tmp_path / "id"
    prepare_dataset(
        prepare_opts(
            raw / "id.csv",
            out,
            tiny_model,
            buckets="128x64x17",
            strategy="audio_ref_only_ic",
            reference_audio_seconds=0.5,
        )
    )
    sample = read_samples(out)["row00000000"]
    assert sample.tensors["reference_audio_latents"].shape == (8, 12, 16)  # 0.5 s at 25 latents/s, rounded
    assert sample.tensors["reference_image_latents"].shape == (128, 1, 2, 4)
    assert sample.tensors["audio_latents"].shape == (8, round(17 / 24 * 25), 16)


def test_cli_demo_flow_and_decode(tmp_path, tiny_model, capsys):
    clips, shards, videos = tmp_path / "clips", tmp_path / "shards", tmp_path / "decoded"
    assert prepare_main(["--make-demo-clips", str(clips), "--num-clips", "4"]) == 0
    assert len(list(clips.glob("*.mp4"))) == 4 and len(list(clips.glob("*.txt"))) == 4
    assert (
        prepare_main(
            [
                str(clips),
                "--out",
                str(shards),
                "--checkpoint",
                str(tiny_model.checkpoint),
                "--gemma",
                str(tiny_model.gemma),
                "--buckets",
                "64x64x17;96x64x17;64x96x17",
                "--no-progress",
                "--lora-trigger",
                "sks",
            ]
        )
        == 0
    )
    assert load_index(shards).num_samples == 4
    assert (
        prepare_main(
            [
                "--decode",
                str(shards),
                "--checkpoint",
                str(tiny_model.checkpoint),
                "--out",
                str(videos),
                "--num-samples",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    from ltxdist.data.media import probe_video, read_audio

    decoded = sorted(videos.glob("*.mp4"))
    assert len(decoded) == 2
    info = probe_video(decoded[0])
    sample = read_samples(shards)[decoded[0].stem]
    w, h, f = (int(v) for v in sample.bucket.split("x"))
    assert (info.width, info.height, info.num_frames, info.has_audio) == (w, h, f, True)
    assert read_audio(decoded[0], 48000).shape[1] > 0.5 * 48000 * f / sample.meta["fps"]


def test_the_empty_caption_follows_the_text_settings(tmp_path, tiny_model, monkeypatch):
    """Caption dropout swaps in the cached empty caption: it must come from the text settings of this
    run. It used to be kept whenever the file existed, unless a unit record showed a change: a run
    killed before its first unit finished (no record), then rerun with another --text-tokens, left the
    old one, and training failed with a shape mismatch hours later."""
    raw, out = tmp_path / "raw", tmp_path / "out"
    clip(raw, "c0.mp4", caption="clip 0")
    prepare_dataset(prepare_opts(raw, out, tiny_model, text_tokens=256))
    assert load_empty_caption(out)["video_context"].shape == (256, 64)
    for path in out.iterdir():  # what a run killed while encoding its first unit leaves
        if path.name != "empty_caption.safetensors":
            path.unlink()
    done = prepare_dataset(prepare_opts(raw, out, tiny_model))  # --text-tokens: the default, 128
    assert done.complete and load_index(out).extra["text_tokens"] == 128
    empty = load_empty_caption(out)
    assert empty["video_context"].shape == (128, 64) and empty["context_mask"].shape == (128,)

    # A run with nothing to do loads no encoder for it (it reads the file's header only).
    def no_loading(*args, **kwargs):
        raise AssertionError("encoders loaded for a finished dataset")

    monkeypatch.setattr("ltxdist.data.prepare.pipeline.EncoderSet.load", no_loading)
    assert prepare_dataset(prepare_opts(raw, out, tiny_model)).encoded == 0


def test_a_clip_added_first_to_a_folder_is_refused_with_the_reason(tmp_path, tiny_model):
    """Folder rows are numbered in sorted path order: a clip that sorts first shifts every other clip
    to another row, so no finished shard matches. The refusal said "another dataset"; it now says the
    folder listing shifted and what to do."""
    raw, out = tmp_path / "raw", tmp_path / "out"
    for name in ("c1.mp4", "c2.mp4"):
        clip(raw, name, caption=name)
    assert prepare_dataset(prepare_opts(raw, out, tiny_model, samples_per_shard=1)).complete
    clip(raw, "c3.mp4", caption="sorts last")  # appended: only its own unit is encoded
    assert prepare_dataset(prepare_opts(raw, out, tiny_model, samples_per_shard=1)).encoded == 1
    clip(raw, "a0.mp4", caption="sorts first")
    with pytest.raises(PrepareError) as refused:
        prepare_dataset(prepare_opts(raw, out, tiny_model, samples_per_shard=1))
    message = str(refused.value)
    assert f"{raw} is a folder: its clips are numbered in sorted path order" in message
    assert "Name new clips so they sort after the existing ones" in message and "--overwrite" in message


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        ("a dog", "sks a dog"),
        ("sks a dog", "sks a dog"),
        ("sks, a dog", "sks, a dog"),  # was "sks sks, a dog": only "sks " and "sks" counted
        ("sks: a dog", "sks: a dog"),
        ("sks", "sks"),
        ("sksdog runs", "sks sksdog runs"),  # another word that only starts like the trigger
        ("sks_dog runs", "sks sks_dog runs"),
    ],
)
def test_the_trigger_word_is_prepended_once(caption, expected):
    from ltxdist.data.prepare.samples import with_trigger

    assert with_trigger(caption, "sks") == expected
    assert with_trigger(caption, None) == caption


def test_each_srun_task_takes_its_own_gpu_on_its_node():
    """--device auto picked cuda:LOCAL_RANK, else cuda:(rank % GPUs). srun sets no LOCAL_RANK, and its
    ranks on a node need not be consecutive: 2 nodes of 2 GPUs, 4 tasks, --distribution=cyclic puts
    ranks 0 and 2 on the first node, and both took cuda:0 while cuda:1 stayed idle. srun's SLURM_LOCALID
    (the task's index on its node) now picks the GPU, when srun gave the rank."""
    from ltxdist.data.prepare.cli import resolve_launch
    from ltxdist.data.prepare.pipeline import gpu_index

    def srun_task(rank: int, local: int) -> dict[str, str]:
        return {"SLURM_PROCID": str(rank), "SLURM_STEP_NUM_TASKS": "4", "SLURM_LOCALID": str(local)}

    def gpu(env: dict[str, str], gpus: int = 2, rank: int | None = None) -> int:
        launch = resolve_launch(rank, None, env)
        return gpu_index(launch.rank, gpus, env, launch.launcher)

    # cyclic: first node ranks 0, 2 (local 0, 1); second node ranks 1, 3 (local 0, 1)
    assert [gpu(srun_task(r, r // 2)) for r in (0, 2, 1, 3)] == [0, 1, 0, 1]
    # srun --gpus-per-task=1: each task sees only its own GPU, which is cuda:0 for every task
    assert gpu(srun_task(2, 1), gpus=1) == 0
    # torchrun (also inside srun) says LOCAL_RANK, modulo the GPUs this process sees
    torchrun = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}
    assert gpu({**srun_task(2, 1), **torchrun}, gpus=4) == 1
    assert gpu({**torchrun, "LOCAL_RANK": "3"}, gpus=1) == 0  # CUDA_VISIBLE_DEVICES=one GPU per process
    # a rank from --rank is no launcher's: SLURM_LOCALID / LOCAL_RANK may describe another process
    assert gpu(srun_task(2, 0), gpus=2, rank=3) == 1
    assert gpu({"LOCAL_RANK": "0"}, gpus=2, rank=3) == 1
    assert gpu({}, gpus=4, rank=6) == 2
    with pytest.raises(ValueError, match="SLURM_LOCALID='x' in the environment is not a whole number"):
        gpu({**srun_task(2, 1), "SLURM_LOCALID": "x"})


def _rewrite_json(path, change) -> None:
    """`change` applied to a JSON file in place (as a file an older ltxdist wrote would read)."""
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _without_revision(data: dict) -> None:
    data.pop("prepare_revision", None)  # an ltxdist-prepare from before revisions were recorded


def test_shards_of_an_older_prepare_revision_are_stale_like_changed_inputs(prepared, tiny_model, tmp_path):
    """ltxdist fixed how samples are made (phone clips came out sideways, EXIF photos, a doubled trigger
    word) without any input of a shard changing: a rerun took shards prepared before the fix as up to
    date, even with --overwrite. A unit of an older revision (none recorded: revision 1) is now stale
    as one of other options is: refused without --overwrite, naming what changed; re-encoded with it."""
    from ltxdist.data.prepare.revision import PREPARE_REVISION

    raw, done, _ = prepared
    out = tmp_path / "out"
    shutil.copytree(done, out)
    units = sorted(out.glob("shard-*.unit.json"))  # rows 0-1, 2-3, 4
    assert len(units) == 3
    _rewrite_json(out / "index.json", _without_revision)
    _rewrite_json(units[0], _without_revision)
    _rewrite_json(units[2], lambda record: record.update(prepare_revision=1))  # said outright
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar")}

    def prepare(**kw):
        same = {"samples_per_shard": 2, "lora_trigger": "sks", "audio": "optional"}  # as `prepared`
        return prepare_dataset(prepare_opts(raw, out, tiny_model, **same, **kw))

    with pytest.raises(PrepareError) as refused:
        prepare()
    message = str(refused.value)
    assert f"index.json: ltxdist-prepare revision 1 -> {PREPARE_REVISION})" in message
    assert "pass --overwrite" in message
    assert "What changed in prepared samples since revision 1:" in message
    assert "display rotation" in message and "EXIF Orientation" in message
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar")} == stamps  # nothing touched

    # --overwrite re-encodes the units of revision 1, recorded or not, and keeps the current one.
    over = prepare(overwrite=True)
    assert (over.encoded, over.replaced_units, over.resumed_units) == (3, 2, 1)
    now = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar")}
    assert {name for name in now if now[name] == stamps[name]} == {"shard-000001.tar"}
    recorded = [json.loads(p.read_text()).get("prepare_revision") for p in [out / "index.json", *units]]
    assert recorded == [PREPARE_REVISION] * 4
    assert prepare().encoded == 0  # up to date from now on: no flag needed


def test_an_old_revision_does_not_hide_another_dataset_and_a_newer_one_is_never_reencoded(
    prepared, tiny_model, tmp_path
):
    """Two refusals the revision must not bend. Another manifest pointed at a dataset of revision 1 (every
    dataset prepared before revisions) was told to pass --overwrite, which would wipe that other dataset:
    it is named as another dataset again. Shards of a newer revision than this ltxdist's were re-encoded
    with --overwrite by the older code, silently undoing its fixes: refused even with --overwrite."""
    from ltxdist.data.prepare.revision import PREPARE_REVISION

    raw, done, _ = prepared
    same = {"samples_per_shard": 2, "lora_trigger": "sks", "audio": "optional"}  # as `prepared`
    old = tmp_path / "old"
    shutil.copytree(done, old)
    for record in [old / "index.json", *old.glob("shard-*.unit.json")]:
        _rewrite_json(record, _without_revision)
    manifest = tmp_path / "other.jsonl"
    manifest.write_text(json.dumps({"video": str(raw / "a.mp4"), "caption": "another dataset"}) + "\n")
    with pytest.raises(PrepareError, match="none of them made from any row of this manifest"):
        prepare_dataset(prepare_opts(manifest, old, tiny_model, **same))

    newer = tmp_path / "newer"
    shutil.copytree(done, newer)
    unit = sorted(newer.glob("shard-*.unit.json"))[0]
    _rewrite_json(unit, lambda record: record.update(prepare_revision=PREPARE_REVISION + 1))
    stamps = {p.name: p.stat().st_mtime_ns for p in newer.glob("shard-*.tar")}
    for overwrite in (False, True):
        with pytest.raises(PrepareError, match=f"newer ltxdist-prepare \\(revision {PREPARE_REVISION + 1};"):
            prepare_dataset(prepare_opts(raw, newer, tiny_model, **same, overwrite=overwrite))
    assert {p.name: p.stat().st_mtime_ns for p in newer.glob("shard-*.tar")} == stamps


def test_training_on_an_older_prepare_revision_warns_once_and_resumes(prepared, tiny_model, tmp_path, caplog):
    """Training used shards prepared before a fix without a word. It now warns at start, once, naming the
    folder, both revisions, what changed and how to re-prepare; the data still trains. An index.json
    without the revision (every dataset prepared before it was recorded) loads, and a run on it
    resumes as the same run: the start-up leaves the file as it is, so its digest (the run identity's
    data entry) stays what the checkpoint recorded."""
    from ltxdist.data.prepare.revision import PREPARE_REVISION
    from ltxdist.training.run_dir import complete_checkpoints
    from ltxdist.training.run_identity import recorded_identity

    _, done, _ = prepared
    old = tmp_path / "old"
    shutil.copytree(done, old)
    _rewrite_json(old / "index.json", _without_revision)
    index_bytes = (old / "index.json").read_bytes()
    run = tmp_path / "run"

    def train(steps: int) -> list[str]:
        caplog.clear()
        short = {"trainer.max_steps": steps, "trainer.checkpoint_every_n_steps": 1}
        overrides = [*train_overrides(tiny_model.checkpoint, old, run, **short), "data=shards"]
        with caplog.at_level(logging.WARNING, logger="ltxdist"):
            train_in_process(compose_train(overrides))
        return [
            r.getMessage() for r in caplog.records if "prepared by ltxdist-prepare revision" in r.getMessage()
        ]

    [warning] = train(1)
    assert warning.startswith(
        f"{old} (data.path) was prepared by ltxdist-prepare revision 1; this ltxdist prepares revision "
        f"{PREPARE_REVISION}"
    )
    assert "display rotation" in warning and "EXIF Orientation" in warning
    assert f"ltxdist-prepare INPUT --out {old} ... --overwrite" in warning
    first = recorded_identity(complete_checkpoints(run)[-1][1])

    assert len(train(2)) == 1  # resumed (run.resume=auto refuses other data), and warned again
    assert [step for step, _ in complete_checkpoints(run)][-1] == 2
    assert recorded_identity(complete_checkpoints(run)[-1][1])["fields"]["data"] == first["fields"]["data"]
    assert (old / "index.json").read_bytes() == index_bytes
