import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ltxdist.encoders.components import (
    AUDIO_DECODER,
    AUDIO_ENCODER,
    VIDEO_DECODER,
    VIDEO_ENCODER,
    VOCODER,
    embeddings_processor_component,
)
from ltxdist.encoders.fingerprint import checkpoint_component_fingerprint
from ltxdist.encoders.loading import build_component
from ltxdist.models.checkpoint_file import CheckpointError, read_checkpoint_info
from ltxdist.models.tiny_checkpoint import write_random_checkpoint

OFFICIAL_PREFIXES = (
    "model.diffusion_model.",
    "vae.encoder.",
    "vae.decoder.",
    "vae.per_channel_statistics.",
    "audio_vae.encoder.",
    "audio_vae.decoder.",
    "audio_vae.per_channel_statistics.",
    "vocoder.vocoder.",
    "vocoder.bwe_generator.",
    "vocoder.mel_stft.",
    "text_embedding_projection.video_aggregate_embed.",
    "text_embedding_projection.audio_aggregate_embed.",
    "model.diffusion_model.video_embeddings_connector.",
    "model.diffusion_model.audio_embeddings_connector.",
)


def test_checkpoint_has_official_layout_and_stays_tiny(tmp_path, tiny_model):
    path = write_random_checkpoint(tmp_path / "t.safetensors", seed=3, with_encoders=True)
    # Size, not wall time, keeps it quick to write and load (timings flake on a shared CPU).
    assert path.stat().st_size < 20e6
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
        meta = f.metadata()
    for prefix in OFFICIAL_PREFIXES:
        assert any(k.startswith(prefix) for k in keys), prefix
    config = json.loads(meta["config"])
    assert {"transformer", "vae", "audio_vae", "vocoder"} <= set(config) and meta["model_version"] == "2.3.0"
    assert config["vocoder"]["bwe"]["output_sampling_rate"] == 48000  # 2.3 vocoder + bandwidth extension
    for f in (tiny_model.gemma / n for n in ("config.json", "model.safetensors", "tokenizer.json")):
        assert f.is_file()
    # Gemma weights in the official google/gemma-3 file layout.
    gemma_keys = list(load_file(str(tiny_model.gemma / "model.safetensors")))
    assert any(k.startswith("language_model.model.layers.") for k in gemma_keys)


def test_transformer_part_is_unchanged_by_encoders(tmp_path):
    plain = load_file(str(write_random_checkpoint(tmp_path / "a.safetensors", seed=1)))
    full = load_file(str(write_random_checkpoint(tmp_path / "b.safetensors", seed=1, with_encoders=True)))
    for key, value in plain.items():
        assert torch.equal(full[key], value), key


@pytest.mark.parametrize(
    "component", [VIDEO_ENCODER, VIDEO_DECODER, AUDIO_ENCODER, AUDIO_DECODER, VOCODER], ids=lambda c: c.name
)
def test_each_component_loads_strictly_with_finite_weights(tiny_model, component):
    model = build_component(tiny_model.checkpoint, component, dtype=torch.float32)
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        assert torch.isfinite(t).all(), name


def test_missing_weights_or_section_are_loud(tmp_path, tiny_model):
    tensors = load_file(str(tiny_model.checkpoint))
    with safe_open(str(tiny_model.checkpoint), "pt") as f:
        meta = f.metadata()
    dropped = "vae.encoder.conv_in.conv.weight"
    save_file(
        {k: v for k, v in tensors.items() if k != dropped}, str(tmp_path / "cut.safetensors"), metadata=meta
    )
    with pytest.raises(CheckpointError, match=r"(?s)video_encoder weights .*missing 1: conv_in.conv.weight"):
        build_component(tmp_path / "cut.safetensors", VIDEO_ENCODER)
    # The lead's transformer-only file: no 'vae' section -> a message that says what to pass instead.
    bare = write_random_checkpoint(tmp_path / "bare.safetensors")
    with pytest.raises(CheckpointError, match="no 'vae' section"):
        build_component(bare, VIDEO_ENCODER)


def test_official_gemma_size_uses_ltx_core_configurator_unchanged():
    from ltx_core.text_encoders.gemma import EmbeddingsProcessorConfigurator

    assert embeddings_processor_component(3840, 48).configurator is EmbeddingsProcessorConfigurator
    assert embeddings_processor_component(32, 2).configurator is not EmbeddingsProcessorConfigurator


def test_encoders_give_the_cached_shapes(encoders):
    frames = torch.randint(0, 255, (17, 64, 96, 3), dtype=torch.uint8)
    z = encoders.video.encode(frames)
    assert z.shape == (128, 3, 2, 3)  # 1 + 16/8 frames, 64/32 x 96/32
    with pytest.raises(ValueError, match="8n\\+1"):
        encoders.video.encode(frames[:16])
    wave = 0.1 * torch.randn(2, 16000)
    assert encoders.audio.encode(wave, encoders.audio.latent_frames(1.0)).shape == (8, 25, 16)
    a = encoders.text.encode("a red square moving right")
    b = encoders.text.encode("a blue square moving left")
    assert a.video_context.shape == (128, 64) and a.audio_context.shape == (
        128,
        32,
    )  # tiny transformer widths
    assert a.context_mask.dtype == torch.bool and a.context_mask.all()  # registers replace padding
    assert not torch.allclose(a.video_context, b.video_context)
    assert torch.equal(encoders.text.encode("a red square moving right").video_context, a.video_context)


def test_decoders_invert_shapes(encoders):
    frames = encoders.video.decode(torch.randn(128, 3, 2, 2))
    assert frames.shape == (17, 64, 64, 3) and frames.dtype == torch.uint8
    wave, rate = encoders.audio.decode(torch.randn(8, 25, 16))
    assert rate == 48000 and wave.shape[0] == 2 and abs(wave.shape[1] - 48000) < 48000 * 0.05


def test_fingerprint_sees_weight_changes(tmp_path, tiny_model):
    info = read_checkpoint_info(tiny_model.checkpoint)
    before = checkpoint_component_fingerprint(info.path, info.config, ("vae.",), ("vae",))
    tensors = load_file(str(tiny_model.checkpoint))
    tensors["vae.encoder.conv_out.conv.weight"] = tensors["vae.encoder.conv_out.conv.weight"] * 1.01
    save_file(tensors, str(tmp_path / "changed.safetensors"), metadata={"config": json.dumps(info.config)})
    after = checkpoint_component_fingerprint(
        tmp_path / "changed.safetensors", info.config, ("vae.",), ("vae",)
    )
    assert before != after
    audio = ("audio_vae.",), ("audio_vae",)
    assert checkpoint_component_fingerprint(
        info.path, info.config, *audio
    ) == checkpoint_component_fingerprint(tmp_path / "changed.safetensors", info.config, *audio)
