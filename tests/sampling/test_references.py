"""IC / ID references at sampling time: files decoded and VAE-encoded (a still looped to the output
length, the voice cut to --reference-audio-seconds, a first-frame image through H.264 at CRF 33 as
ltx-pipelines does), bad references named by their flag; the LoRA metadata written by training
(downscale factor, ID positions and masks) read back by `ltxdist-sample` and by validation sampling; the
CLI end to end with --reference-video (a still) and --reference-audio + --image; and validation's
preparation (encoders released after use, nothing loaded on a rank without jobs)."""

from __future__ import annotations

import gc
import io
import json
import math
import weakref
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import ltxdist.encoders.audio as audio_vae_module
import ltxdist.encoders.video as video_vae_module
import ltxdist.sampling.conditioning as conditioning
import ltxdist.sampling.pipeline as pipeline
import ltxdist.training.validation as validation
from ltxdist.config.schema import (
    AudioRefOnlyICStrategyConfig,
    StandardStrategyConfig,
    StrategyConfig,
    ValidationConfig,
    ValidationReference,
    VideoToVideoStrategyConfig,
)
from ltxdist.data.media import resize_crop, write_video
from ltxdist.encoders import AudioVAE, VideoVAE
from ltxdist.lora import LoRASpec, export_lora, inject_lora, read_lora_file
from ltxdist.models import load_transformer
from ltxdist.sampling import IdReferenceOptions, References, Sampler, SampleRequest, VideoSpec, lora_strength
from ltxdist.sampling.cli import _request, build_parser
from ltxdist.sampling.cli import main as sample_main
from ltxdist.sampling.grid import GridRunner, GridSpec
from ltxdist.sampling.sheet import write_png
from ltxdist.training.train import lora_extra_metadata
from ltxdist.training.validation import ValidationSampling, build_jobs

SPEC = VideoSpec(64, 64, 9, 24.0)  # latent grid 2 x 2 x 2
RATE = 16000  # the tiny audio VAE's rate, as LTX-2.3's
SMALL = ["--width", "64", "--height", "64", "--frames", "9", "--steps", "2", "--no-progress"]
UNGUIDED = ["--cfg", "1", "--audio-cfg", "1", "--stg", "0", "--audio-stg", "0", "--modality-scale", "1"]
# An ID-LoRA trained with every option away from its default, so a dropped key shows.
ID_STRATEGY = AudioRefOnlyICStrategyConfig(
    use_negative_ref_positions=False,
    mask_video_to_ref_audio=True,
    mask_ref_audio_to_text=True,
    identity_guidance_scale=2.5,
)
ID_OPTIONS = IdReferenceOptions(
    negative_positions=False, mask_video_to_ref_audio=True, mask_ref_audio_to_text=True
)
IC_STRATEGY = VideoToVideoStrategyConfig(reference_downscale_factor=2)


def _pattern(f: int, w: int, h: int, seed: int) -> torch.Tensor:
    """Smooth random uint8 frames (F, H, W, 3): survive H.264 without turning into noise."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(f, 3, 4, 4, generator=g) * 255
    x = torch.nn.functional.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def _decode_all(path: Path) -> torch.Tensor:
    with av.open(str(path)) as c:
        return torch.from_numpy(np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]))


def _h264_round_trip(image_HWC: torch.Tensor, crf: int) -> torch.Tensor:
    """One frame through libx264 at `crf` and back, written here independently of ltxdist's encoder, the
    way ltx-pipelines' conditioning preprocess does it (rgb24 -> yuv420p, preset veryfast, rate 1)."""
    array = np.ascontiguousarray(image_HWC.numpy())
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as c:
        stream = c.add_stream("libx264", rate=1, options={"crf": str(crf), "preset": "veryfast"})
        stream.height, stream.width = array.shape[:2]
        frame = av.VideoFrame.from_ndarray(array, format="rgb24").reformat(format="yuv420p")
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            c.mux(packet)
    with av.open(io.BytesIO(buffer.getvalue())) as c:
        return torch.from_numpy(next(c.decode(video=0)).to_ndarray(format="rgb24"))


def _pipelines_resize(image_HWC: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """ltx-pipelines' resize_and_center_crop, written here from its definition: scale by the larger of
    the two ratios to ceil'd sizes with plain bilinear interpolation (torch's default: no antialiasing,
    align_corners=False), centre-crop; rounded back to uint8."""
    h, w = image_HWC.shape[:2]
    scale = max(height / h, width / w)
    new_h, new_w = math.ceil(h * scale), math.ceil(w * scale)
    x = image_HWC.permute(2, 0, 1)[None].float()
    x = torch.nn.functional.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    x = x[0, :, top : top + height, left : left + width].permute(1, 2, 0)
    return x.round().clamp(0, 255).to(torch.uint8)


def _write_wav(path: Path, seconds: float, seed: int) -> torch.Tensor:
    """A 16 kHz stereo PCM file; returns its samples as the float waveform a reader must get back."""
    g = torch.Generator().manual_seed(seed)
    pcm = (torch.randn(2, round(seconds * RATE), generator=g) * 4000).round().to(torch.int16)
    with av.open(str(path), "w", format="wav") as c:
        stream = c.add_stream("pcm_s16le", rate=RATE)
        stream.layout = "stereo"
        frame = av.AudioFrame.from_ndarray(
            pcm.T.contiguous().numpy().reshape(1, -1), format="s16", layout="stereo"
        )
        frame.sample_rate = RATE
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            c.mux(packet)
    return pcm.float() / 32768


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("references")
    clip = write_video(root / "ref.mp4", _pattern(9, 32, 32, seed=1), 24.0)  # at the reference size
    return {
        "clip": clip,
        "still": write_png(root / "sheet.png", _pattern(1, 32, 32, seed=2)[0]),
        "face": write_png(root / "face.png", _pattern(1, 64, 64, seed=3)[0]),
        "odd_face": write_png(root / "odd_face.png", _pattern(1, 81, 67, seed=5)[0]),  # 81 wide, 67 high
        "voice": root / "voice.wav",
        "voice_wave": _write_wav(root / "voice.wav", 0.5, seed=4),
    }


def _export(tiny_full, path: Path, strategy: StrategyConfig, targets: str) -> Path:
    """A LoRA file as training exports it: metadata from `lora_extra_metadata` of the strategy config."""
    model = load_transformer(tiny_full.checkpoint, dtype=torch.float32).model
    inject_lora(model, LoRASpec(rank=2, alpha=2, targets=(targets,)))
    return export_lora(
        model,
        path,
        base_model_version="2.3.0",
        training_strategy=strategy.name,
        step=1,
        target_modules=[targets],
        extra_metadata=lora_extra_metadata(OmegaConf.structured(strategy)),
    )


@pytest.fixture(scope="module")
def loras(tiny_full, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ref_loras")
    return {
        "ic": _export(tiny_full, root / "ic.safetensors", IC_STRATEGY, "video_attn"),
        "id": _export(tiny_full, root / "id.safetensors", ID_STRATEGY, "audio_id"),
    }


# -- encode_references ------------------------------------------------------------------------------


def test_encode_references_decodes_encodes_and_loops_a_still(sampler, media):
    refs = References(
        video=media["clip"], downscale_factor=2, image=media["face"], audio=media["voice"], audio_seconds=0.2
    )
    cond = sampler.encode_references(SampleRequest(prompt="p", video=SPEC, references=refs))
    vae, avae = sampler.video_vae, sampler.audio_vae
    # reference video: the file's frames (decoded here with PyAV), at output size / 2, through the VAE
    assert cond.reference_downscale_factor == 2
    assert torch.equal(cond.reference_video_CFHW, vae.encode(_decode_all(media["clip"])))
    assert cond.reference_video_CFHW.shape == (128, 2, 1, 1)
    # image: one clean first frame at the output size, through H.264 at CRF 33 (ltx-pipelines' default)
    face = _h264_round_trip(_decode_all(media["face"])[0], 33)
    assert torch.equal(cond.first_frame_CFHW, vae.encode(face[None]))
    assert cond.first_frame_CFHW.shape == (128, 1, 2, 2)
    # voice: the first 0.2 s of the file (not all 0.5 s), 25 latent frames per second
    assert cond.reference_audio_CTM.shape == (8, 5, 16)
    assert torch.equal(cond.reference_audio_CTM, avae.encode(media["voice_wave"][:, : round(0.2 * RATE)], 5))
    assert cond.id_options == IdReferenceOptions()  # the request's (default) options travel along

    # a still (a reference sheet) is looped to the output length, then encoded like a clip
    still = sampler.encode_references(
        SampleRequest(prompt="p", video=SPEC, references=References(video=media["still"], downscale_factor=2))
    )
    looped = _decode_all(media["still"]).expand(9, -1, -1, -1).contiguous()
    assert torch.equal(still.reference_video_CFHW, vae.encode(looped))
    assert still.first_frame_CFHW is None and still.reference_audio_CTM is None


def test_first_frame_image_reaches_the_vae_through_h264_at_crf_33(sampler, media, monkeypatch):
    """As ltx-pipelines conditions on an image: re-compressed at its own size (an odd last row / column
    cut for 4:2:0), then resized to the output as ltx-pipelines resizes (bilinear without antialiasing;
    it was antialiased, as training data are); `image_crf=0` passes the raw image."""
    seen: list[torch.Tensor] = []
    encode = sampler.video_vae.encode

    def encode_recording(frames_FHWC: torch.Tensor) -> torch.Tensor:
        seen.append(frames_FHWC.clone())
        return encode(frames_FHWC)

    monkeypatch.setattr(sampler.video_vae, "encode", encode_recording)

    def vae_input(refs: References) -> torch.Tensor:
        seen.clear()
        sampler.encode_references(SampleRequest(prompt="p", video=SPEC, references=refs))
        (frames,) = seen
        assert frames.shape == (1, 64, 64, 3)
        return frames[0]

    raw = _decode_all(media["odd_face"])[0]
    assert raw.shape == (67, 81, 3)
    compressed = _h264_round_trip(raw[:66, :80], 33)
    assert not torch.equal(compressed, raw[:66, :80])  # CRF 33 visibly changes this image
    default = vae_input(References(image=media["odd_face"]))
    assert torch.equal(default, _pipelines_resize(compressed, 64, 64))
    assert not torch.equal(default, _pipelines_resize(raw, 64, 64))
    assert torch.equal(
        vae_input(References(image=media["odd_face"], image_crf=0)), _pipelines_resize(raw, 64, 64)
    )
    # ltx-pipelines resizes without antialiasing; training data are antialiased (resize_crop)
    assert not torch.equal(_pipelines_resize(raw, 64, 64), resize_crop(raw, 64, 64))


def test_bad_references_are_errors_naming_the_flag(sampler, media):
    def encode(spec: VideoSpec, refs: References, s: Sampler = sampler):
        return s.encode_references(SampleRequest(prompt="p", video=spec, references=refs))

    # 9 frames cannot cover 17 output frames (a still would be looped; a clip is not)
    with pytest.raises(ValueError, match=r"--reference-video .*ref\.mp4 has 9 frames.* 17 output frames"):
        encode(replace(SPEC, num_frames=17), References(video=media["clip"], downscale_factor=2))
    with pytest.raises(ValueError, match=r"--reference-downscale 3: 64x64 / 3"):
        encode(SPEC, References(video=media["clip"], downscale_factor=3))
    no_audio_vae = Sampler(
        sampler.transformer,
        video_vae=sampler.video_vae,
        audio_vae=None,
        text=None,
        device=sampler.device,
        dtype=sampler.dtype,
    )
    with pytest.raises(ValueError, match="--reference-audio needs the audio VAE"):
        encode(SPEC, References(audio=media["voice"]), no_audio_vae)


# -- LoRA metadata: training writes, sampling and validation read ----------------------------------


def _cli_request(tiny_full, *extra: str):
    model = ["--checkpoint", str(tiny_full.checkpoint), "--gemma", str(tiny_full.gemma)]
    args = build_parser().parse_args(["generate", *model, "--prompt", "p", "--out", "o.mp4", *extra])
    return _request(args, "p", 0, [read_lora_file(p.split(":")[0]) for p in args.lora])


def test_training_metadata_is_what_sampling_and_validation_use(tiny_full, loras):
    id_meta = read_lora_file(loras["id"]).metadata
    assert (
        id_meta["use_negative_ref_positions"],
        id_meta["mask_video_to_ref_audio"],
        id_meta["mask_ref_audio_to_text"],
    ) == ("false", "true", "true")
    assert read_lora_file(loras["ic"]).metadata["reference_downscale_factor"] == "2"

    # ltxdist-sample takes them from the file unless a flag says otherwise
    assert _cli_request(tiny_full, "--lora", str(loras["id"])).id_options == ID_OPTIONS
    flagged = _cli_request(tiny_full, "--lora", str(loras["id"]), "--id-negative-positions")
    assert flagged.id_options == replace(ID_OPTIONS, negative_positions=True)
    assert _cli_request(tiny_full, "--lora", f"{loras['ic']}:0.5").references.downscale_factor == 2
    ic_flag = _cli_request(tiny_full, "--lora", str(loras["ic"]), "--reference-downscale", "1")
    assert ic_flag.references.downscale_factor == 1
    assert _cli_request(tiny_full).id_options == IdReferenceOptions()  # no LoRA: the defaults
    assert _cli_request(tiny_full).references.image_crf == 33  # ltx-pipelines' CRF for LTX-2.3 images
    assert _cli_request(tiny_full, "--image-crf", "0").references.image_crf == 0
    with pytest.raises(SystemExit):
        _cli_request(tiny_full, "--image-crf", "52")

    # identity guidance and rescale: an ID run (a reference voice) defaults to ID-LoRA's inference
    assert id_meta["identity_guidance_scale"] == "2.5"
    voice = ["--reference-audio", "v.wav"]
    id_run = _cli_request(tiny_full, "--lora", str(loras["id"]), *voice).guidance
    assert id_run.identity_scale == 2.5  # from the LoRA file
    assert (id_run.video.rescale_scale, id_run.audio.rescale_scale) == (0.0, 0.0)  # ID-LoRA: no rescale
    assert (id_run.video.cfg_scale, id_run.audio.cfg_scale, id_run.video.modality_scale) == (3.0, 7.0, 3.0)
    assert (id_run.video.stg_scale, id_run.audio.stg_scale, id_run.video.stg_blocks) == (1.0, 1.0, (29,))
    flag = _cli_request(tiny_full, "--lora", str(loras["id"]), *voice, "--identity-guidance", "0")
    assert flag.guidance.identity_scale == 0.0
    assert _cli_request(tiny_full, *voice).guidance.identity_scale == 3.0  # no metadata: the published 3
    plain = _cli_request(tiny_full, "--lora", str(loras["ic"])).guidance
    assert plain.identity_scale == 0.0 and plain.video.rescale_scale == 0.7  # not an ID run
    # STG: ltx-pipelines' LTX-2.3 block 28 (29 is LTX-2's); an ID run keeps ID-LoRA's 29 (above)
    assert plain.video.stg_blocks == plain.audio.stg_blocks == (28,)
    with pytest.raises(ValueError, match=r"--identity-guidance .*--reference-audio"):
        _cli_request(tiny_full, "--identity-guidance", "3")

    # validation sampling during training uses the strategy config the metadata was written from
    val = OmegaConf.structured(
        ValidationConfig(
            name="default",
            prompts=["a", "b"],
            seeds=[1, 2],
            references=[ValidationReference(audio="v.wav", image="f.png")] * 2,
        )
    )
    jobs = build_jobs(val, OmegaConf.structured(ID_STRATEGY))
    assert len(jobs) == 4 and all(j.request.id_options == ID_OPTIONS for j in jobs)
    assert all(j.request.guidance.identity_scale == 2.5 for j in jobs)
    assert jobs[0].request.references.audio == Path("v.wav")
    assert all(j.request.references.image_crf == 33 for j in jobs)
    no_crf = build_jobs(OmegaConf.merge(val, {"image_crf": 0}), OmegaConf.structured(ID_STRATEGY))
    assert all(j.request.references.image_crf == 0 for j in no_crf)
    ic_jobs = build_jobs(val, OmegaConf.structured(IC_STRATEGY))
    assert all(j.request.references.downscale_factor == 2 for j in ic_jobs)
    # other strategies do not carry ID options into sampling
    standard = build_jobs(val, OmegaConf.structured(StandardStrategyConfig()))
    assert all(j.request.id_options == IdReferenceOptions() for j in standard)
    assert all(j.request.guidance.identity_scale == 0.0 for j in standard)
    # stg_mode: stg_v perturbs the video only (the IC card), stg_av both streams
    video_only = build_jobs(OmegaConf.merge(val, {"stg_mode": "stg_v"}), OmegaConf.structured(IC_STRATEGY))
    g = video_only[0].request.guidance
    assert (g.video.stg_scale, g.audio.stg_scale) == (1.0, 0.0)
    assert jobs[0].request.guidance.audio.stg_scale == 1.0


# -- the CLI end to end -----------------------------------------------------------------------------


@pytest.fixture
def recorded(monkeypatch) -> dict[str, list]:
    """What the CLI's sampler really received: encoded references, masks set, reference-audio layout."""
    seen: dict[str, list] = {"cond": [], "masks": [], "negative_positions": [], "encoders_denoising": []}
    encode, set_masks, reference_audio, denoise = (
        Sampler.encode_references,
        pipeline.set_attention_masks,
        conditioning.clean_reference_audio,
        Sampler.denoise,
    )

    def encode_recording(self, request):
        seen["cond"].append(encode(self, request))
        return seen["cond"][-1]

    def masks_recording(model, key_keep=None, query_keep=None):
        seen["masks"].append((sorted(key_keep or {}), sorted(query_keep or {})))
        set_masks(model, key_keep, query_keep)

    def reference_audio_recording(batch, *, negative_positions, device):
        seen["negative_positions"].append(negative_positions)
        return reference_audio(batch, negative_positions=negative_positions, device=device)

    def denoise_recording(self, request, cond, **kwargs):
        seen["encoders_denoising"].append(_loaded_encoders(self))
        return denoise(self, request, cond, **kwargs)

    monkeypatch.setattr(Sampler, "encode_references", encode_recording)
    monkeypatch.setattr(Sampler, "denoise", denoise_recording)
    monkeypatch.setattr(pipeline, "set_attention_masks", masks_recording)
    monkeypatch.setattr(conditioning, "clean_reference_audio", reference_audio_recording)
    return seen


def _loaded_encoders(sampler: Sampler) -> list[str]:
    """The sampler's VAE encoders that hold weights now."""
    vaes = {"video": sampler.video_vae, "audio": sampler.audio_vae}
    return [name for name, vae in vaes.items() if vae is not None and vae._encoder is not None]


def _streams(path: Path) -> tuple[int, bool]:
    with av.open(str(path)) as c:
        has_audio = bool(c.streams.audio)
        return sum(1 for _ in c.decode(video=0)), has_audio


def test_cli_ic_still_reference_with_the_factor_from_lora_metadata(
    tiny_full, loras, media, recorded, tmp_path
):
    out = tmp_path / "ic.mp4"
    base = ["--checkpoint", str(tiny_full.checkpoint), "--gemma", str(tiny_full.gemma), *SMALL, *UNGUIDED]
    ref = ["--reference-video", str(media["still"]), "--no-audio"]
    sample_main([*base, "--prompt", "x", "--lora", str(loras["ic"]), *ref, "--out", str(out)])
    assert _streams(out) == (9, False)
    (cond,) = recorded["cond"]
    assert cond.reference_downscale_factor == 2  # from the LoRA file, no flag given
    assert cond.reference_video_CFHW.shape == (128, 2, 1, 1)  # the still looped to 9 frames at 32x32
    settings = json.loads(out.with_suffix(".json").read_text())["request"]["references"]
    assert settings["downscale_factor"] == 2 and settings["video"] == str(media["still"])
    assert recorded["encoders_denoising"] == [[]]  # the VAE encoder was freed before denoising


def test_cli_id_voice_and_image_with_options_from_lora_metadata(tiny_full, loras, media, recorded, tmp_path):
    out = tmp_path / "id.mp4"
    base = ["--checkpoint", str(tiny_full.checkpoint), "--gemma", str(tiny_full.gemma), *SMALL, *UNGUIDED]
    refs = [
        "--reference-audio",
        str(media["voice"]),
        "--reference-audio-seconds",
        "0.2",
        "--image",
        str(media["face"]),
    ]
    sample_main([*base, "--prompt", "x", "--lora", str(loras["id"]), *refs, "--out", str(out)])
    assert _streams(out) == (9, True)
    (cond,) = recorded["cond"]
    assert cond.id_options == ID_OPTIONS  # all three from the LoRA file
    assert cond.reference_audio_CTM.shape == (8, 5, 16) and cond.first_frame_CFHW.shape == (128, 1, 2, 2)
    settings = json.loads(out.with_suffix(".json").read_text())["request"]["references"]
    assert (
        settings["image"] == str(media["face"]) and settings["image_crf"] == 33
    )  # the default CRF, recorded
    assert recorded["negative_positions"] == [False]  # the voice overlaps the target, as trained
    # the masks of training are set for sampling, then cleared
    assert recorded["masks"] == [(["audio_to_video_attn"], ["audio_attn2"]), ([], [])]
    assert recorded["encoders_denoising"] == [[]]  # both VAE encoders freed before denoising


def test_validation_samples_at_the_configured_lora_strength(tiny_full, tmp_path):
    """The IC card validates at LoRA strength 1.4: the live adapters are scaled by it while validation
    samples, and restored for training afterwards."""
    from ltxdist.lora import lora_modules

    model = load_transformer(tiny_full.checkpoint, dtype=torch.float32).model
    inject_lora(model, LoRASpec(rank=2, alpha=4, targets=("video_attn",)))
    trained = [m.scaling for m in lora_modules(model).values()]
    val = OmegaConf.structured(ValidationConfig(name="ic_lora_card", prompts=["p"], lora_strength=1.4))
    callback = ValidationSampling(
        val,
        run_dir=tmp_path,
        model_checkpoint="unused",
        strategy_cfg=OmegaConf.structured(IC_STRATEGY),
        lockstep=False,
    )
    seen: list[list[float]] = []

    def denoise(request, cond, progress):
        seen.append([m.scaling for m in lora_modules(model).values()])
        return None, None

    callback._sampler = SimpleNamespace(denoise=denoise, reference_latents=lambda request: None)
    callback._mine = [(job, False) for job in callback.jobs]  # sampled, not written
    trainer = SimpleNamespace(strategy=SimpleNamespace(barrier=lambda name: None), is_global_zero=False)
    callback.run(trainer, SimpleNamespace(transformer=model), step=10)
    assert seen == [[1.4 * s for s in trained]]
    assert [m.scaling for m in lora_modules(model).values()] == trained  # restored for training


# -- the grid: each reference set encoded once ------------------------------------------------------


def test_grid_encodes_references_once_and_samples_the_same_cells(
    tiny_full, sampler, media, lora_file, monkeypatch, tmp_path
):
    """The grid encoded the same references again for every cell (rows x strengths x checkpoints + base
    column) and kept the VAE encoders loaded while denoising. Now: once per reference, the encoders freed
    before the first cell, and every cell equal to the cell sampled with freshly encoded references."""
    model = load_transformer(tiny_full.checkpoint, dtype=torch.float32).model.eval()
    # The grid injects its LoRA into a fresh base; the VAEs are the session sampler's.
    grid_sampler = Sampler(
        model,
        video_vae=sampler.video_vae,
        audio_vae=sampler.audio_vae,
        text=sampler.text,
        device=sampler.device,
        dtype=sampler.dtype,
    )
    refs = References(
        video=media["clip"], downscale_factor=2, image=media["face"], audio=media["voice"], audio_seconds=0.2
    )
    template = SampleRequest(prompt="", video=SPEC, steps=2, references=refs)
    spec = GridSpec(
        loras=(lora_file,),
        prompts=("sks red ball",),
        seeds=(1, 2),
        strengths=(1.0,),
        bleed_prompts=("red ball",),
    )

    def fresh(record) -> tuple[torch.Tensor, ...]:  # the uncached path: references encoded for this cell
        request = replace(template, prompt=record.prompt, seed=record.seed)
        video, audio = grid_sampler.denoise(request, grid_sampler.encode_references(request), progress=False)
        frames, (wave, _) = grid_sampler.decode(video, audio)
        return video, audio, frames, wave

    expected = [fresh(row) for row in spec.rows()]  # the base column, before the grid injects the LoRA

    encoded: list[tuple[str, tuple[int, ...]]] = []  # (VAE, input shape) of every call to a real encode
    video_encode, audio_encode = VideoVAE.encode, AudioVAE.encode

    def video_counting(self, frames_FHWC):
        encoded.append(("video", tuple(frames_FHWC.shape)))
        return video_encode(self, frames_FHWC)

    def audio_counting(self, waveform_CN, num_latent_frames):
        encoded.append(("audio", tuple(waveform_CN.shape)))
        return audio_encode(self, waveform_CN, num_latent_frames)

    monkeypatch.setattr(VideoVAE, "encode", video_counting)
    monkeypatch.setattr(AudioVAE, "encode", audio_counting)
    cells: list[tuple[torch.Tensor, ...]] = []
    loaded: list[list[str]] = []
    generate, denoise = grid_sampler.generate, grid_sampler.denoise

    def denoise_recording(*args, **kwargs):
        loaded.append(_loaded_encoders(grid_sampler))
        return denoise(*args, **kwargs)

    def generate_recording(*args, **kwargs):
        result = generate(*args, **kwargs)
        cells.append((result.video_latent, result.audio_latent, result.frames_FHWC, result.audio[0]))
        return result

    grid_sampler.denoise, grid_sampler.generate = denoise_recording, generate_recording
    records = GridRunner(grid_sampler, template, base_model_version="2.3.0").run(
        spec, tmp_path, progress=False
    )
    assert len(records) == len(cells) == 8  # 4 rows (2 seeds x trigger / bleed): base + strength 1
    # image (64x64 first frame) and reference video (9 frames at 32x32) once each, the voice once
    assert sorted(encoded) == [
        ("audio", (2, round(0.2 * RATE))),
        ("video", (1, 64, 64, 3)),
        ("video", (9, 32, 32, 3)),
    ]
    assert loaded == [[]] * 8  # no encoder held while any cell denoises

    for record in records[4:]:  # the LoRA cells, sampled again with references encoded for each
        with lora_strength(model, record.strength):
            expected.append(fresh(record))
    for record, got, want in zip(records, cells, expected, strict=True):
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True)), record


# -- validation's preparation at train start --------------------------------------------------------


@pytest.fixture
def prepared(tiny_full, sampler, media, monkeypatch, tmp_path):
    """A validation callback with one ID job (voice + face), and what its preparation loaded: how often
    the text encoder loader ran, and a weak reference to every VAE part built (by component name)."""
    loads: list[str] = []
    built: dict[str, list[weakref.ref]] = {}
    load_text, build_video, build_audio = (
        validation.load_text_encoder,
        video_vae_module.build_component,
        audio_vae_module.build_component,
    )

    def load_text_counting(*args, **kwargs):
        loads.append("text")
        return load_text(*args, **kwargs)

    def recording(build):
        def build_recording(checkpoint, component, **kwargs):
            module = build(checkpoint, component, **kwargs)
            built.setdefault(component.name, []).append(weakref.ref(module))
            return module

        return build_recording

    monkeypatch.setattr(validation, "load_text_encoder", load_text_counting)
    monkeypatch.setattr(video_vae_module, "build_component", recording(build_video))
    monkeypatch.setattr(audio_vae_module, "build_component", recording(build_audio))
    val = ValidationConfig(
        name="id_lora",
        prompts=["p"],
        seeds=[1],
        references=[ValidationReference(audio=str(media["voice"]), image=str(media["face"]))],
        width=64,
        height=64,
        num_frames=9,
        steps=2,
        stg_blocks=[1],
        gemma_root=str(tiny_full.gemma),
        at_start=False,
    )
    callback = ValidationSampling(
        OmegaConf.structured(val),
        run_dir=tmp_path,
        model_checkpoint=str(tiny_full.checkpoint),
        strategy_cfg=OmegaConf.structured(ID_STRATEGY),
        lockstep=False,  # DDP: one job, two ranks -> rank 1 has none
    )
    module = SimpleNamespace(
        device=sampler.device, dtype_compute=torch.float32, transformer=sampler.transformer
    )
    return SimpleNamespace(callback=callback, module=module, loads=loads, built=built)


def _trainer(rank: int, barriers: list[str] | None = None) -> SimpleNamespace:
    strategy = SimpleNamespace(barrier=lambda name: (barriers if barriers is not None else []).append(name))
    return SimpleNamespace(
        global_rank=rank, world_size=2, global_step=0, strategy=strategy, is_global_zero=rank == 0
    )


def test_validation_releases_the_vae_encoders_after_encoding_references(prepared):
    prepared.callback.on_train_start(_trainer(0), prepared.module)
    sampler = prepared.callback._sampler
    assert len(sampler._reference_cache) == 1  # encoded at the start: the read below encodes nothing
    cond = sampler.reference_latents(prepared.callback._mine[0][0].request)
    assert cond.first_frame_CFHW is not None and cond.reference_audio_CTM is not None
    gc.collect()
    alive = {name: any(ref() is not None for ref in refs) for name, refs in prepared.built.items()}
    # The encoders were built for the references, then dropped; the decoders stay for every validation.
    assert alive == {
        "video_encoder": False,
        "audio_encoder": False,
        "video_decoder": True,
        "audio_decoder": True,
        "vocoder": True,
    }
    assert prepared.loads == ["text"]  # rank 0 has the job: it encodes the prompt


def test_a_rank_without_validation_jobs_loads_no_encoder(prepared):
    barriers: list[str] = []
    trainer = _trainer(1, barriers)
    prepared.callback.on_train_start(trainer, prepared.module)
    assert prepared.loads == [] and prepared.built == {}  # no Gemma, no VAE part
    # It still joins each validation's barrier (rank 0 waits there), writing nothing.
    assert prepared.callback.run(trainer, prepared.module, step=10) == []
    assert barriers == ["ltxdist-validation"]


def _validation_start_worker(rank: int, init_file: str, checkpoint: str, outcomes: dict) -> None:
    """One rank of two: rank 0 has the only validation job and its set-up fails, first with an error (no
    such checkpoint), then with a Ctrl-C while loading; rank 1 has none and loads nothing."""
    import torch.distributed as dist

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        strategy = SimpleNamespace(barrier=lambda name: None, root_device=torch.device("cpu"))
        trainer = SimpleNamespace(
            global_rank=rank, world_size=2, global_step=0, strategy=strategy, is_global_zero=rank == 0
        )
        module = SimpleNamespace(device=torch.device("cpu"), dtype_compute=torch.float32, transformer=None)
        for case in ("error", "interrupt"):
            if case == "interrupt":
                validation.VideoVAE = interrupted
            callback = ValidationSampling(
                OmegaConf.structured(ValidationConfig(prompts=["p"], seeds=[1], at_start=False)),
                run_dir=Path(init_file).parent,
                model_checkpoint=checkpoint,
                strategy_cfg=OmegaConf.structured(StandardStrategyConfig()),
                lockstep=False,
            )
            try:
                callback.on_train_start(trainer, module)
                outcomes[(case, rank)] = "went on to train"
            except BaseException as exc:
                outcomes[(case, rank)] = f"{type(exc).__name__}: {exc}"
    finally:
        dist.destroy_process_group()


def test_a_validation_set_up_failure_stops_every_rank_not_only_those_with_jobs(tmp_path):
    """Rank 1 has no job and loads nothing; when rank 0 fails to load its models (an error, or a Ctrl-C
    while loading), rank 1 must stop too instead of training on into a collective that waits
    `parallel.collective_timeout_s` for rank 0."""
    import torch.multiprocessing as mp

    outcomes = mp.Manager().dict()
    missing = str(tmp_path / "missing.safetensors")
    mp.spawn(_validation_start_worker, args=(str(tmp_path / "init"), missing, outcomes), nprocs=2, join=True)
    assert outcomes[("error", 0)].startswith(f"CheckpointError: checkpoint not found: {missing}")
    assert outcomes[("interrupt", 0)] == "KeyboardInterrupt: "
    for case in ("error", "interrupt"):
        agreed = "RuntimeError: validation set-up failed on another rank"
        assert outcomes[(case, 1)].startswith(agreed), (case, outcomes[(case, 1)])


def test_a_reference_set_first_seen_after_the_release_frees_the_encoders_again(tiny_full, sampler, media):
    """After release_reference_encoders(), a request with new references builds the VAE encoder to encode
    them, and must free it again instead of holding it through that request's denoising."""
    vae = VideoVAE(tiny_full.checkpoint, sampler.device, sampler.dtype)
    fresh = Sampler(
        sampler.transformer,
        video_vae=vae,
        audio_vae=None,
        text=sampler.text,
        device=sampler.device,
        dtype=sampler.dtype,
    )
    first = SampleRequest(prompt="", video=SPEC, steps=2, references=References(image=media["face"]))
    fresh.encode_reference_sets([first], release=True)
    assert vae._encoder is None
    later = replace(first, references=References(image=media["still"]))
    latents = fresh.reference_latents(later)
    assert latents.first_frame_CFHW is not None  # encoded ...
    assert vae._encoder is None  # ... and the encoder freed again
    assert fresh.reference_latents(later) is latents  # cached: no second encode
