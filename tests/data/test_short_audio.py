"""A clip whose audio track is shorter than its video: the padding is recorded at preparation and kept
out of the loss and of attention (or the clip is refused, naming the file). The clip: 2.6 s of video
(65 frames at 25 fps) with 1.0 s of sound, so 65 target audio latent frames of which about 39-40 are
padding."""

from __future__ import annotations

import pytest
import torch

from ltxdist.data.buckets import parse_buckets
from ltxdist.data.collate import collate_samples
from ltxdist.data.manifest import ManifestRow
from ltxdist.data.media import write_video
from ltxdist.data.prepare.demo import AUDIO_RATE, CONCEPTS, render_clip, render_tone
from ltxdist.data.prepare.samples import ClipError, SampleBuilder, SampleSpec
from ltxdist.data.sample import SampleError, validate_sample
from ltxdist.strategies import AudioRefOnlyICStrategy, StandardStrategy
from ltxdist.strategies.rng import sample_generators

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("short_audio") / "talk.mp4"
    frames = render_clip(CONCEPTS[0], 64, 64, 65, seed=0)
    return write_video(path, frames, 25.0, audio=(render_tone(CONCEPTS[0], 1.0), AUDIO_RATE))


def _builder(encoders, **spec) -> SampleBuilder:
    return SampleBuilder(SampleSpec(buckets=tuple(parse_buckets("64x64x65")), **spec), encoders)


def _row(clip) -> ManifestRow:
    return ManifestRow(0, "dataset.jsonl row 1", clip, "a person speaks", reference_audio=clip)


def _prepare(batch, strategy):
    gens = sample_generators(0, batch["ids"], batch["epochs"])
    return strategy.prepare(batch, dtype=torch.float32, device=CPU, generators=gens)


def test_padding_of_a_short_track_stays_out_of_the_loss_and_attention(encoders, short_clip):
    sample = _builder(encoders, strategy="audio_ref_only_ic", reference_audio_seconds=5.0).build(
        _row(short_clip)
    )
    assert sample.tensors["audio_latents"].shape[1] == 65  # the clip's 2.6 s, padded
    sound = sample.meta["audio_frames"]
    assert 25 <= sound <= 26  # 1.0 s of sound (+ the AAC decoder's few ms), 25 latent frames per second
    # The reference is read unpadded: its own length, all of it sound.
    ref_frames = sample.tensors["reference_audio_latents"].shape[1]
    assert ref_frames == sample.meta["reference_audio_frames"] == sound

    batch = collate_samples([sample])
    assert batch["audio_lengths"].tolist() == [sound] and batch["audio_padded"] is True
    expected_mask = [1.0] * sound + [0.0] * (65 - sound)
    # Joint audio of the standard strategy: padding out of the loss and out of attention as keys.
    out = _prepare(batch, StandardStrategy(first_frame_conditioning_p=0.0))
    assert out.audio_targets.loss_mask_BT.tolist() == [expected_mask]
    assert out.key_keep["audio_attn1"].tolist() == [[m == 1.0 for m in expected_mask]]
    # ID-LoRA: [reference | target]; the target's padding masked the same way, the reference kept.
    out = _prepare(batch, AudioRefOnlyICStrategy(first_frame_conditioning_p=0.0))
    assert out.audio_targets.loss_mask_BT.tolist() == [expected_mask]
    keep = out.key_keep["audio_attn1"].tolist()[0]
    assert keep == [True] * sound + [m == 1.0 for m in expected_mask]
    assert sum(1 for m in expected_mask if m == 0.0) >= 39  # what used to be trained as silence


def test_short_tracks_can_be_refused_naming_the_file(encoders, short_clip):
    with pytest.raises(ClipError, match=r"dataset\.jsonl row 1: .*talk\.mp4: its audio track holds 1\.0\d s"):
        _builder(encoders, short_audio="refuse").build(_row(short_clip))
    with pytest.raises(ValueError, match="--short-audio 'drop'"):
        _builder(encoders, short_audio="drop")


def test_a_recorded_sound_length_must_fit_its_tensor(encoders, short_clip):
    sample = _builder(encoders).build(_row(short_clip))
    sample.meta["audio_frames"] = 66
    with pytest.raises(SampleError, match=r"audio_frames=66 does not fit audio_latents \(65 frames\)"):
        validate_sample(sample)
