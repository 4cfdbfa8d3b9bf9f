import pytest
import torch
from data_helpers import clip

from ltxdist.data.media import (
    MediaError,
    NoAudioError,
    probe_video,
    read_audio,
    read_frames,
    read_image,
    write_video,
)


@pytest.mark.parametrize(
    ("width", "height", "frames", "fps"), [(64, 64, 17, 24.0), (160, 90, 30, 25.0), (48, 96, 9, 30.0)]
)
def test_pyav_clips_of_several_sizes_and_lengths(tmp_path, width, height, frames, fps):
    path = clip(tmp_path, "c.mp4", width=width, height=height, frames=frames, fps=fps)
    info = probe_video(path)
    assert (info.width, info.height, info.num_frames, info.fps, info.has_audio) == (
        width,
        height,
        frames,
        fps,
        True,
    )
    got = read_frames(path, 9, 32, 64)
    assert got.shape == (9, 64, 32, 3) and got.dtype == torch.uint8
    assert read_frames(path, 1000, 32, 32).shape[0] == frames  # the true length, not the container's guess


def test_frames_keep_content(tmp_path):
    # The demo clip's square is red on a dark background; after resize + crop it must still be red.
    path = clip(tmp_path, "red.mp4", width=96, height=64, frames=9, concept=0)
    frames = read_frames(path, 9, 64, 64)
    red = (frames[..., 0].float() > 150) & (frames[..., 1].float() < 100)
    assert red.float().mean() > 0.05
    assert read_image(path, 64, 64).shape == (64, 64, 3)


def test_audio_resampled_to_vae_rate_and_exact_length(tmp_path):
    path = clip(tmp_path, "a.mp4", frames=24, fps=24.0)  # 1 s, 44.1 kHz source
    wave = read_audio(path, 16000, seconds=17 / 24)
    assert wave.shape == (2, round(17 / 24 * 16000)) and wave.dtype == torch.float32
    assert 0.1 < wave.abs().max() < 1.0
    # Asking for more than the track holds pads with silence, or stops at the end without padding.
    assert read_audio(path, 16000, seconds=3.0).shape == (2, 48000)
    assert read_audio(path, 16000, seconds=3.0, pad=False).shape[1] < 17000


def test_no_audio_and_broken_files_name_the_file(tmp_path):
    silent = clip(tmp_path, "silent.mp4", audio=False)
    with pytest.raises(NoAudioError, match=r"silent.mp4: no audio stream"):
        read_audio(silent, 16000)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00not a video" * 100)
    with pytest.raises(MediaError, match=r"junk.mp4: cannot open"):
        probe_video(junk)
    good = clip(tmp_path, "good.mp4", frames=17)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    with pytest.raises(MediaError, match=r"cut.mp4"):
        probe_video(cut)
        read_frames(cut, 17, 64, 64)
    with pytest.raises(MediaError, match=r"missing.mp4: file not found"):
        probe_video(tmp_path / "missing.mp4")


def test_write_video_with_audio_roundtrip(tmp_path):
    frames = torch.randint(0, 255, (9, 32, 48, 3), dtype=torch.uint8)
    wave = 0.2 * torch.randn(2, 48000 // 2)
    path = write_video(tmp_path / "out.mp4", frames, 24.0, (wave, 48000))
    info = probe_video(path)
    assert (info.width, info.height, info.num_frames, info.has_audio) == (48, 32, 9, True)
    assert abs(read_audio(path, 48000).shape[1] - 24000) < 2048  # AAC priming/padding
    assert not list(tmp_path.glob("*.tmp-*"))  # atomic: no temporary left behind
