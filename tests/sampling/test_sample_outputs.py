"""End to end on the tiny model: `ltxdist-sample` writes a playable mp4 with audio; seeds reproduce; LoRA
strengths through live adapters equal ltx-core's fusion; the evaluation grid writes its sheets + table."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

import av
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ltxdist._ltx_core import BatchedPerturbationConfig, Modality
from ltxdist.lora import LoRAFileError, lora_modules, read_lora_file
from ltxdist.models import load_transformer
from ltxdist.sampling import (
    LoRAChoice,
    Sampler,
    SampleRequest,
    VideoSpec,
    fused_transformer,
    inject_lora_file,
    lora_strength,
    write_sample,
)
from ltxdist.sampling.cli import main as sample_main
from ltxdist.sampling.grid import GridRunner, GridSpec, load_summary, remove_trigger
from ltxdist.sampling.guidance import Guidance, GuidanceParams
from ltxdist.strategies.positions import audio_positions, video_positions

CPU = torch.device("cpu")
SMALL = ["--width", "96", "--height", "64", "--frames", "9", "--steps", "2", "--no-progress"]
GUIDED = ["--cfg", "2", "--audio-cfg", "3", "--stg", "1", "--audio-stg", "0", "--stg-blocks", "1"]


def _read_back(path) -> tuple[np.ndarray, dict]:
    """Decoded RGB frames and stream facts, read with PyAV (each stream from its own demux pass)."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(v)])
        info = {"video_codec": v.codec_context.name, "audio": None}
    with av.open(str(path)) as c:
        if c.streams.audio:
            a = c.streams.audio[0]
            samples = sum(f.samples for f in c.decode(a))
            info["audio"] = {"codec": a.codec_context.name, "rate": a.rate, "samples": samples}
    return frames, info


def test_cli_writes_playable_mp4_with_audio(tiny_full, lora_file, tmp_path, capsys):
    out = tmp_path / "clip.mp4"
    base = ["--checkpoint", str(tiny_full.checkpoint), "--gemma", str(tiny_full.gemma), *SMALL, *GUIDED]
    loras = ["--lora", f"{lora_file}:0.75", "--lora", f"{lora_file}:-0.25"]  # any number of LoRAs
    sample_main([*base, "--prompt", "a red ball", "--seed", "3", *loras, "--out", str(out)])
    frames, info = _read_back(out)
    assert frames.shape == (9, 64, 96, 3)  # requested frames, height, width
    assert info["video_codec"] == "h264"
    assert info["audio"]["codec"] == "aac" and info["audio"]["rate"] == 48000
    assert info["audio"]["samples"] >= 0.3 * 48000  # ~9 frames / 24 fps of sound
    settings = json.loads(out.with_suffix(".json").read_text())
    assert settings["loras"] == [
        {"path": str(lora_file), "strength": 0.75},
        {"path": str(lora_file), "strength": -0.25},
    ]
    assert settings["request"]["seed"] == 3 and settings["base_model_version"] == "2.3.0"
    assert "wrote" in capsys.readouterr().out

    # user mistakes: exit 2 with a message naming the flag / file
    for extra, message in (
        (["--stg-blocks", "29"], "STG blocks [29] do not exist"),
        (["--frames", "10"], "--frames must be 8n+1"),
        (["--lora", str(tmp_path / "missing.safetensors")], "LoRA file not found"),
        # refused before any weights load (it was found only after the voice had been encoded)
        (["--no-audio", "--reference-audio", str(out)], "cannot be used with --no-audio"),
    ):
        with pytest.raises(SystemExit) as exc:
            sample_main([*base, "--prompt", "x", "--out", str(tmp_path / "bad.mp4"), *extra])
        assert exc.value.code == 2
        captured = capsys.readouterr()
        assert message in captured.err and "Loading weights" not in captured.out + captured.err


def test_same_seed_same_video_other_seed_other_video(sampler, tmp_path):
    guidance = Guidance(
        GuidanceParams(cfg_scale=2.0, stg_scale=1.0, stg_blocks=(1,)), GuidanceParams(cfg_scale=3.0)
    )
    request = SampleRequest(prompt="a blue cube", video=VideoSpec(64, 64, 9), steps=2, guidance=guidance)
    paths = []
    for name, seed in (("a", 11), ("b", 11), ("c", 12)):
        paths.append(
            write_sample(
                tmp_path / f"{name}.mp4", sampler.generate(replace(request, seed=seed), progress=False), 24
            )
        )
    (fa, ia), (fb, ib), (fc, _) = (_read_back(p) for p in paths)
    assert ia["audio"] is not None and ia["audio"]["samples"] == ib["audio"]["samples"]
    assert np.array_equal(fa, fb), "same seed must give the same video"
    assert np.abs(fa.astype(int) - fc.astype(int)).mean() > 5, "another seed must give another video"


@torch.no_grad()
def test_injected_strength_equals_ltx_core_fusion(tiny_full, lora_file):
    """Live adapters scaled by a strength (grid, validation) == ltx-core's W + strength * B @ A."""
    lora = read_lora_file(lora_file)
    injected = load_transformer(tiny_full.checkpoint, dtype=torch.float32).model.eval()
    inject_lora_file(injected, lora, base_model_version="2.3.0")
    g = torch.Generator().manual_seed(0)
    lat, alat = torch.randn(1, 128, 2, 2, 2, generator=g), torch.randn(1, 8, 9, 16, generator=g)
    v = Modality(
        latent=lat.flatten(2).transpose(1, 2).contiguous(),
        sigma=torch.tensor([0.5]),
        timesteps=torch.full((1, 1), 0.5),
        positions=video_positions(lat, torch.tensor([24.0]), torch.float32),
        context=torch.randn(1, 8, 64, generator=g),
    )
    a = Modality(
        latent=alat.permute(0, 2, 1, 3).flatten(2).contiguous(),
        sigma=torch.tensor([0.5]),
        timesteps=torch.full((1, 1), 0.5),
        positions=audio_positions(alat),
        context=torch.randn(1, 8, 32, generator=g),
    )
    empty = BatchedPerturbationConfig.empty(1)
    base_v, _ = load_transformer(tiny_full.checkpoint, dtype=torch.float32).model(v, a, empty)

    def effect_error(got, want):  # relative to the LoRA's own effect on the output
        return float((got - want).norm() / (want - base_v).norm())

    for strength in (0.5, 1.0):
        fused, _, _ = fused_transformer(
            tiny_full.checkpoint, [LoRAChoice(lora_file, strength)], device=CPU, dtype=torch.float32
        )
        want_v, _ = fused(v, a, empty)
        with lora_strength(injected, strength):
            got_v, _ = injected(v, a, empty)
        with lora_strength(injected, strength * 1.5):
            wrong_v, _ = injected(v, a, empty)
        assert (want_v - base_v).abs().max() > 1e-2  # the LoRA does change the output
        # ltx-core forms B @ A in bf16 (the file's dtype): agreement within that rounding, not exact
        assert effect_error(got_v, want_v) < 0.02
        assert effect_error(wrong_v, want_v) > 0.2  # a wrong strength is far off
    with lora_strength(injected, 0.0):
        torch.testing.assert_close(injected(v, a, empty)[0], base_v)  # strength 0 is the base model
    with pytest.raises(LoRAFileError, match=r"base model version 2\.3\.0"):
        inject_lora_file(load_transformer(tiny_full.checkpoint).model, lora, base_model_version="2.0.0")


def test_grid_refuses_a_lora_outside_the_blocks_and_names_the_way_that_fuses_it(tiny_full, tmp_path):
    """Per-block injection (the grid) cannot reproduce an adapter on `proj_out`: an error naming the file
    and `generate`, not an IndexError; ltx-core's fusion (`generate`) does take it."""
    from safetensors.torch import save_file

    model = load_transformer(tiny_full.checkpoint, dtype=torch.float32).model
    out = model.proj_out
    path = tmp_path / "proj_out.safetensors"
    g = torch.Generator().manual_seed(0)
    save_file(
        {
            "diffusion_model.proj_out.lora_A.weight": torch.randn(2, out.in_features, generator=g),
            "diffusion_model.proj_out.lora_B.weight": torch.randn(out.out_features, 2, generator=g),
        },
        str(path),
        metadata={"base_model_version": "2.3.0"},
    )
    with pytest.raises(LoRAFileError, match=r"proj_out\.safetensors.*ltxdist-sample generate"):
        inject_lora_file(model, read_lora_file(path), base_model_version="2.3.0")
    fused, _, _ = fused_transformer(tiny_full.checkpoint, [LoRAChoice(path)], device=CPU, dtype=torch.float32)
    assert not torch.equal(fused.proj_out.weight, out.weight)


def test_grid_finds_every_files_problem_before_sampling(sampler, tiny_full, lora_file, tmp_path):
    """A file the runner cannot load after the first one (another rank, adapters outside the blocks, another
    base, another model size) is refused before the base column is sampled (minutes at 22B), naming it."""
    model = load_transformer(tiny_full.checkpoint, dtype=torch.float32).model
    runner_sampler = replace_transformer(sampler, model)

    def no_sampling(*args, **kwargs):
        raise AssertionError("the grid sampled before checking every LoRA file")

    runner_sampler.generate = no_sampling
    template = SampleRequest(prompt="", video=VideoSpec(64, 64, 9), steps=2, with_audio=False)
    runner = GridRunner(runner_sampler, template, base_model_version="2.3.0")
    tensors = load_file(lora_file)
    one = "diffusion_model.transformer_blocks.0.attn1.to_q"
    a, b = tensors[one + ".lora_A.weight"], tensors[one + ".lora_B.weight"]
    bad = {
        "rank2": ({one + ".lora_A.weight": a[:2], one + ".lora_B.weight": b[:, :2].contiguous()}, "2.3.0"),
        "proj_out": (
            {
                "diffusion_model.proj_out.lora_A.weight": torch.zeros(4, model.proj_out.in_features),
                "diffusion_model.proj_out.lora_B.weight": torch.zeros(model.proj_out.out_features, 4),
            },
            "2.3.0",
        ),
        "old_base": (tensors, "2.0.0"),
        "wide": (
            {one + ".lora_A.weight": torch.zeros(4, 2 * a.shape[1]), one + ".lora_B.weight": b},
            "2.3.0",
        ),
    }
    messages = {
        "rank2": "differ in modules or rank",
        "proj_out": "outside the transformer blocks",
        "old_base": "base model version 2.0.0",
        "wide": "another model size",
    }
    for name, (payload, version) in bad.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(payload, path, metadata={"base_model_version": version})
        spec = GridSpec(loras=(lora_file, path), prompts=("sks dog",), seeds=(0,), bleed_prompts=("dog",))
        with pytest.raises(LoRAFileError, match=rf"{name}\.safetensors.*{messages[name]}"):
            runner.run(spec, tmp_path / "grid", progress=False)
    assert not lora_modules(model), "nothing was injected either"
    assert not (tmp_path / "grid").exists()


def test_remove_trigger():
    assert remove_trigger("sks dog running, sks style", "sks") == "dog running, style"
    assert remove_trigger("a photo of ohwx man", "ohwx") == "a photo of man"
    with pytest.raises(ValueError, match="does not occur"):
        remove_trigger("a dog", "sks")


@pytest.mark.slow
def test_grid_writes_contact_sheets_and_summary(sampler, tiny_full, lora_file, tmp_path):
    template = SampleRequest(
        prompt="", video=VideoSpec(64, 64, 9), steps=2, guidance=Guidance(), with_audio=False
    )
    # The session sampler carries no adapters; the grid injects into a fresh base of its own.
    runner_sampler = replace_transformer(
        sampler, load_transformer(tiny_full.checkpoint, dtype=torch.float32).model
    )
    runner = GridRunner(runner_sampler, template, base_model_version="2.3.0")
    prompt = "sks red ball"
    spec = GridSpec(
        loras=(lora_file,),
        prompts=(prompt,),
        seeds=(1,),
        strengths=(0.5, 1.0),
        bleed_prompts=(remove_trigger(prompt, "sks"),),
    )
    records = runner.run(spec, tmp_path, progress=False)
    assert len(records) == 2 + 2 * 2  # base column for 2 rows, then 2 rows x 2 strengths
    sheet = tmp_path / lora_file.stem / "contact_sheet.mp4"
    frames, _ = _read_back(sheet)
    gap = 4
    assert frames.shape == (9, gap + 2 * (64 + gap), gap + 3 * (64 + gap), 3)  # 2 rows x (base + 2)
    still, _ = _read_back(sheet.with_suffix(".png"))
    assert still.shape[1:] == frames.shape[1:]
    summary = load_summary(tmp_path)
    assert summary["layout"]["columns"] == ["base", "strength 0.5", "strength 1"]
    assert [r["bleed"] for r in summary["layout"]["rows"]] == [False, True]
    cells = {(c["row"], c["strength"]): c for c in summary["cells"] if c["checkpoint"] != "base"}
    assert cells[(0, 1.0)]["video_delta_vs_base"] > 0 and cells[(1, 0.5)]["video_delta_vs_base"] > 0
    # the strength-1 cell really is the base model + LoRA at strength 1 (recomputed independently)
    base_row0, _ = _read_back(tmp_path / "base" / "r00.mp4")
    lora_row0, _ = _read_back(cells[(0, 1.0)]["file"])
    assert np.abs(base_row0.astype(int) - lora_row0.astype(int)).mean() > 1
    table = (tmp_path / "summary.md").read_text()
    assert "| checkpoint | step | strength | trigger rows | bleed rows | bleed / trigger |" in table
    assert f"| {lora_file.stem} | 100 | 1 |" in table


def test_grid_reads_each_lora_files_tensors_once(tiny_full, lora_file, tmp_path, monkeypatch, capsys):
    """`ltxdist-sample grid` checked each file by reading all its tensors (on the command line, then in the
    runner), then read them again to sample: three reads of a ~1 GB rank-128 file. The checks read the
    header; a bad file is still refused before any weights load, with the same message."""
    import safetensors
    from safetensors_spy import tensor_read_spy

    import ltxdist.lora.comfy_format as comfy_format

    reads: Counter[tuple[str, str]] = Counter()
    monkeypatch.setattr(comfy_format, "safe_open", tensor_read_spy(reads))
    base = ["grid", "--checkpoint", str(tiny_full.checkpoint), "--gemma", str(tiny_full.gemma), *SMALL]
    fast = ["--no-audio", "--cfg", "1", "--stg", "0", "--stg-blocks", "1", "--seeds", "1", "--strengths", "1"]
    prompt = ["--prompt", "sks red ball", "--trigger", "sks"]
    sample_main([*base, *fast, *prompt, "--lora", str(lora_file), "--out-dir", str(tmp_path / "grid")])
    with safetensors.safe_open(str(lora_file), framework="pt") as f:
        keys = set(f.keys())
    assert {key for _, key in reads} == keys and {path for path, _ in reads} == {str(lora_file)}
    assert set(reads.values()) == {1}, "each tensor is read once: the checks read the header only"
    assert (tmp_path / "grid" / lora_file.stem / "contact_sheet.mp4").is_file()
    capsys.readouterr()

    key = "diffusion_model.transformer_blocks.0.attn1.to_q"
    bad_rank = tmp_path / "bad_rank.safetensors"
    save_file(
        {key + ".lora_A.weight": torch.zeros(4, 8), key + ".lora_B.weight": torch.zeros(8, 2)}, bad_rank
    )
    old = tmp_path / "old.safetensors"
    save_file(load_file(lora_file), old, metadata={"base_model_version": "2.0.0"})
    for lora, message in (
        (bad_rank, f"{bad_rank}: transformer_blocks.0.attn1.to_q has lora_A (4, 8) and lora_B (8, 2)"),
        (old, f"{old} was trained on base model version 2.0.0, but the base is 2.3.0"),
        (tmp_path / "missing.safetensors", "LoRA file not found"),
    ):
        with pytest.raises(SystemExit) as exc:
            sample_main([*base, *fast, *prompt, "--lora", str(lora), "--out-dir", str(tmp_path / "bad")])
        assert exc.value.code == 2
        captured = capsys.readouterr()
        assert message in captured.err and "Loading weights" not in captured.out + captured.err
    assert not (tmp_path / "bad").exists()


def replace_transformer(sampler, transformer):
    return Sampler(
        transformer.eval(),
        video_vae=sampler.video_vae,
        audio_vae=sampler.audio_vae,
        text=sampler.text,
        device=sampler.device,
        dtype=sampler.dtype,
    )


def test_grid_refuses_two_loras_of_one_name(tmp_path):
    """Comparing two runs at one step (runA/lora/lora_weights_step_000500, runB/...) keyed both by the
    file name: the second overwrote the first's videos and the summary mixed their cells."""
    name = "lora_weights_step_000500.safetensors"
    spec = GridSpec(
        loras=(tmp_path / "runA" / name, tmp_path / "runB" / name, tmp_path / "other.safetensors"),
        prompts=("sks dog",),
        seeds=(0,),
        bleed_prompts=("dog",),
    )
    with pytest.raises(ValueError, match=r"named \['lora_weights_step_000500'\]"):
        spec.check()
    GridSpec(loras=spec.loras[1:], prompts=spec.prompts, seeds=spec.seeds, bleed_prompts=("dog",)).check()
