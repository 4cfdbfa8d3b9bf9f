import math
import random
import struct
import tracemalloc
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from data_helpers import clip, exif_jpeg, exif_png, exif_tiff, exif_webp, png_chunk, rotate_display

from ltxdist.data.exif import ExifError, exif_orientation
from ltxdist.data.media import (
    MediaError,
    NoAudioError,
    probe_video,
    read_audio,
    read_conditioning_image,
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


def _gray_ramp_clip(path, frames, step, size=64, fps=24.0, audio=None):
    """Frame i is uniformly gray at level step * i: each decoded frame says which frame it is."""
    levels = torch.arange(frames, dtype=torch.int64) * step
    video = levels.view(-1, 1, 1, 1).expand(frames, size, size, 3).to(torch.uint8)
    return write_video(path, video, fps, audio)


def _frame_numbers(frames_FHWC, step):
    return (frames_FHWC.float().mean(dim=(1, 2, 3)) / step).round().long().tolist()


def _tone(freq, seconds, rate, amplitude=0.5):
    t = torch.arange(round(seconds * rate), dtype=torch.float64) / rate
    return (amplitude * torch.sin(2 * math.pi * freq * t)).float()


def _peak_hz(wave_N, rate):
    spectrum = torch.fft.rfft(wave_N.double()).abs()
    return float(torch.argmax(spectrum)) * rate / wave_N.shape[0]


def test_frame_numbers_survive_the_codec(tmp_path):
    # The marker itself must be readable for the tests below to mean anything.
    path = _gray_ramp_clip(tmp_path / "ramp.mp4", 40, 6)
    got = read_frames(path, 1000, 64, 64)
    assert _frame_numbers(got, 6) == list(range(40))
    assert _frame_numbers(read_frames(path, 17, 64, 64), 6) == list(range(17))


def test_mono_audio_becomes_the_stereo_the_audio_vae_expects(tmp_path, encoders):
    frames = torch.zeros(24, 32, 32, 3, dtype=torch.uint8)
    mono = write_video(tmp_path / "mono.mp4", frames, 24.0, (_tone(440, 1.0, 44100)[None], 44100))
    rate = encoders.audio.sample_rate
    wave = read_audio(mono, rate, seconds=1.0)
    assert wave.shape == (2, rate)
    assert torch.equal(wave[0], wave[1])  # the one channel duplicated, not half of it dropped
    # At the source's level (RMS of a 0.5 sine: 0.354), not 3 dB down as FFmpeg's mono->stereo rematrix
    # gives; measured away from the AAC edges.
    rms = float(wave[0, rate // 8 : -rate // 8].square().mean().sqrt())
    assert rms == pytest.approx(0.5 / 2**0.5, rel=0.08)
    assert abs(_peak_hz(wave[0], rate) - 440) < 3  # resampled, not reinterpreted at another rate
    assert encoders.audio.encode(wave, encoders.audio.latent_frames(1.0)).shape == (8, 25, 16)
    # A stereo track keeps its channels apart (440 Hz left, 1 kHz right): no silent downmix.
    two = torch.stack([_tone(440, 1.0, 44100), _tone(1000, 1.0, 44100)])
    stereo = write_video(tmp_path / "stereo.mp4", frames, 24.0, (two, 44100))
    left, right = read_audio(stereo, rate, seconds=1.0)
    assert abs(_peak_hz(left, rate) - 440) < 3 and abs(_peak_hz(right, rate) - 1000) < 3


def _spy_video_encoder(encoders, monkeypatch):
    """Record what the real video VAE is asked to encode (it still encodes it)."""
    seen = []
    real = encoders.video.encode

    def encode(frames_FHWC):
        seen.append(frames_FHWC.clone())
        return real(frames_FHWC)

    monkeypatch.setattr(encoders.video, "encode", encode)
    return seen


def test_prepare_takes_the_first_frames_of_a_long_mono_clip(tmp_path, encoders, monkeypatch):
    from ltxdist.data.buckets import parse_buckets
    from ltxdist.data.manifest import ManifestRow
    from ltxdist.data.prepare.samples import SampleBuilder, SampleSpec

    # 40 frames for a 17-frame bucket: frames 0..16 must be encoded, not the middle, the end or a stride.
    path = _gray_ramp_clip(tmp_path / "long.mp4", 40, 6, audio=(_tone(440, 40 / 24, 44100)[None], 44100))
    seen = _spy_video_encoder(encoders, monkeypatch)
    spec = SampleSpec(buckets=tuple(parse_buckets("64x64x17;64x64x9")), audio="required")
    sample = SampleBuilder(spec, encoders).build(ManifestRow(0, "test row 0", path, "a gray ramp"))
    assert sample.bucket == "64x64x17" and len(seen) == 1
    assert _frame_numbers(seen[0], 6) == list(range(17))
    assert sample.tensors["audio_latents"].shape == (8, round(17 / 24 * 25), 16)  # mono track encoded


def test_a_reference_still_is_looped_into_a_static_video(tmp_path, encoders, monkeypatch):
    from ltxdist.data.buckets import parse_buckets
    from ltxdist.data.manifest import ManifestRow
    from ltxdist.data.prepare.samples import SampleBuilder, SampleSpec

    target = _gray_ramp_clip(tmp_path / "target.mp4", 17, 6)
    # A still with structure (a horizontal ramp and a red square), so "static" cannot pass by being blank.
    ramp = torch.linspace(20, 230, 32).round().to(torch.uint8)
    still = ramp.view(1, 1, 32, 1).expand(1, 32, 32, 3).clone()
    still[0, 8:16, 8:16] = torch.tensor([220, 30, 30], dtype=torch.uint8)
    image = write_video(tmp_path / "sheet.mp4", still, 24.0)
    seen = _spy_video_encoder(encoders, monkeypatch)
    spec = SampleSpec(
        buckets=tuple(parse_buckets("64x64x17")),
        strategy="video_to_video",
        reference_downscale_factor=2,
        audio="off",
    )
    row = ManifestRow(0, "test row 0", target, "sheet", reference_image=image)
    sample = SampleBuilder(spec, encoders).build(row)
    target_frames, reference_frames = seen
    assert _frame_numbers(target_frames, 6) == list(range(17))  # the target moves ...
    assert reference_frames.shape == (17, 32, 32, 3)  # ... the reference covers all 17 frames, static:
    assert all(torch.equal(frame, reference_frames[0]) for frame in reference_frames)
    assert (reference_frames[0].float() - still[0].float()).abs().mean() < 4  # and it is the still
    assert sample.tensors["reference_video_latents"].shape == (128, 3, 1, 1)


def _corner_clip(path, width=96, height=64, frames=9):
    """A dark clip with one bright corner (top-left as stored): shows which way a picture was turned."""
    pixels = torch.zeros(frames, height, width, 3, dtype=torch.uint8)
    pixels[:, :16, :16] = 255
    return write_video(path, pixels, 24.0)


def _bright_corner(frame_HWC):
    h, w = frame_HWC.shape[:2]
    corners = {"top-left": (0, 0), "top-right": (0, w - 8), "bottom-left": (h - 8, 0)}
    corners["bottom-right"] = (h - 8, w - 8)
    return [name for name, (y, x) in corners.items() if frame_HWC[y : y + 8, x : x + 8].float().mean() > 128]


@pytest.mark.parametrize(
    ("clockwise", "size", "corner"),
    [
        (0, (96, 64), "top-left"),
        (90, (64, 96), "top-right"),
        (180, (96, 64), "bottom-right"),
        (270, (64, 96), "bottom-left"),
    ],
)
def test_a_display_rotation_is_applied(tmp_path, clockwise, size, corner):
    """Phones store portrait clips as landscape frames plus a display matrix; it used to be ignored, so
    they were bucketed landscape and trained sideways. Sizes and pixels are now as a player shows them
    (for 90 degrees, FFmpeg's autorotate (transpose=clock) gave the same pixels, checked by hand)."""
    path = rotate_display(_corner_clip(tmp_path / "phone.mp4"), clockwise)
    info = probe_video(path)
    assert (info.width, info.height) == size
    frames = read_frames(path, 9, *size)
    assert frames.shape == (9, size[1], size[0], 3)
    assert _bright_corner(frames[0]) == [corner] and _bright_corner(frames[-1]) == [corner]


# TIFF 6.0 / Exif: each Orientation value says where the stored picture's first row and first column
# are shown (e.g. 6: the first row on the right, the first column at the top: a phone held upright).
EXIF_EDGES = {
    1: ("top", "left"),
    2: ("top", "right"),
    3: ("bottom", "right"),
    4: ("bottom", "left"),
    5: ("left", "top"),
    6: ("right", "top"),
    7: ("right", "bottom"),
    8: ("left", "bottom"),
}


def _as_stored(upright_HWC: torch.Tensor, orientation: int) -> torch.Tensor:
    """The pixels a camera stores for `upright` with this Orientation, from the table above."""
    row_edge, column_edge = EXIF_EDGES[orientation]
    if row_edge in ("left", "right"):  # stored rows are shown as columns
        stored = upright_HWC.transpose(0, 1)  # stored row i = shown column i, from the left
        reverse_rows, reverse_columns = row_edge == "right", column_edge == "bottom"
    else:
        stored = upright_HWC
        reverse_rows, reverse_columns = row_edge == "bottom", column_edge == "right"
    if reverse_rows:
        stored = stored.flip(0)
    if reverse_columns:
        stored = stored.flip(1)
    return stored.contiguous()


def _photo(width: int = 48, height: int = 32) -> torch.Tensor:
    """An upright picture no mirror or turn maps onto itself: red grows to the right, green downwards,
    and a white square sits near the top-left corner."""
    x = torch.arange(width).view(1, -1).expand(height, -1) * 255 // (width - 1)
    y = torch.arange(height).view(-1, 1).expand(-1, width) * 255 // (height - 1)
    photo = torch.stack([x, y, torch.full_like(x, 90)], -1).to(torch.uint8)
    photo[4:12, 4:12] = 240
    return photo


def _mean_error(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.float() - b.float()).abs().mean())


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_photo_is_turned_upright_by_its_exif_orientation(tmp_path, orientation):
    """Phones store the sensor's pixels plus an EXIF Orientation. FFmpeg turns it into a display
    rotation, which got 1, 3, 6, 8 right but read the mirrored 2, 4, 5, 7 as rotations: a left-right
    mirror (2) came out upside down. ltxdist reads the tag from the JPEG itself now. Both TIFF byte
    orders; JPEG loss (about 1 level here) is far below the gap to any wrong orientation (> 40)."""
    upright = _photo()
    assert min(_mean_error(upright, upright.flip(d)) for d in ((0,), (1,), (0, 1))) > 40
    byte_order = "II" if orientation % 2 else "MM"
    tiff = exif_tiff(orientation, byte_order)
    path = exif_jpeg(tmp_path / "photo.jpg", _as_stored(upright, orientation), tiff)
    info = probe_video(path)
    assert (info.width, info.height) == (48, 32)
    assert _mean_error(read_image(path, 48, 32), upright) < 4
    assert _mean_error(read_conditioning_image(path, 48, 32, crf=0), upright) < 4


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


JFIF_APP0 = _segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")


def test_exif_after_other_segments(tmp_path):
    """The EXIF segment is found after a JFIF APP0, an XMP APP1 (APP1 too, not EXIF) and fill bytes."""
    before = JFIF_APP0 + _segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta/>") + b"\xff\xff"
    upright = _photo()
    path = exif_jpeg(tmp_path / "p.jpg", _as_stored(upright, 7), exif_tiff(7, "MM"), before=before)
    assert _mean_error(read_image(path, 48, 32), upright) < 4


@pytest.mark.parametrize(
    "before",
    [JFIF_APP0 + b"\x00\x12junk", b"\x00junk" + JFIF_APP0, JFIF_APP0 + b"\xff\x00\x01", b"\xff\xe2\x00\x01"],
    ids=["stray-after-app0", "stray-after-soi", "stuffed-zero", "length-1-segment"],
)
def test_stray_bytes_between_jpeg_segments_are_skipped(tmp_path, caplog, before):
    """FFmpeg (and libjpeg) decode a JPEG with stray bytes between segments, or a segment whose length
    is < 2, scanning on to the next marker, and FFmpeg still applies the EXIF behind them (checked: a
    half turn for Orientation 2). ltxdist used to give up on such a file with a warning that the EXIF
    was ignored, so FFmpeg's half turn put the mirror upside down."""
    upright = _photo()
    path = exif_jpeg(tmp_path / "p.jpg", _as_stored(upright, 2), exif_tiff(2), before=before)
    with caplog.at_level("WARNING"):
        assert _mean_error(read_image(path, 48, 32), upright) < 4
    assert not caplog.records


def test_the_jpeg_marker_scan_crosses_its_read_blocks(tmp_path):
    """Stray bytes are searched a block at a time: a marker split across two blocks is still found."""
    from ltxdist.data.exif import _SCAN_BLOCK

    jpeg = exif_jpeg(tmp_path / "p.jpg", _photo(), exif_tiff(5)).read_bytes()
    for stray in range(_SCAN_BLOCK - 4, _SCAN_BLOCK + 2):  # the EXIF marker's 0xFF ends the first block
        path = tmp_path / f"stray{stray}.jpg"
        path.write_bytes(jpeg[:2] + b"\x00" * stray + jpeg[2:])
        assert exif_orientation(path, "mjpeg") == 5, stray


def _broken(offset: int, new: bytes) -> bytes:
    """Orientation 6's EXIF block (little-endian) with `new` written at `offset`."""
    good = exif_tiff(6)
    return good[:offset] + new + good[offset + len(new) :]


@pytest.mark.parametrize(
    ("tiff", "reason"),
    [
        (exif_tiff(6)[:6], "holds 6 bytes, fewer than a TIFF header"),
        (_broken(0, b"XX"), "byte order b'XX' is neither"),
        (_broken(4, (400).to_bytes(4, "little")), "IFD0 at offset 400, outside"),
        (_broken(8, (5).to_bytes(2, "little")), "IFD0's 5 entries run past the end"),
        (exif_tiff(9), "Orientation 9 is not one of 1..8"),
        (_broken(12, (4).to_bytes(2, "little")), "type 4 and count 1, not one SHORT"),
    ],
    ids=["short", "byte-order", "ifd-offset", "entry-count", "value", "type"],
)
def test_malformed_exif_is_ignored_with_a_warning_naming_the_file(tmp_path, caplog, tiff, reason):
    """Every offset is checked against the block: a broken EXIF leaves the picture as stored (FFmpeg,
    given these, sees no rotation either) and says which file and why, instead of an error or a guess."""
    stored = _as_stored(_photo(), 6)
    path = exif_jpeg(tmp_path / "broken.jpg", stored, tiff)
    with caplog.at_level("WARNING"):
        got = read_image(path, 32, 48)
    assert _mean_error(got, stored) < 4
    assert f"{path}: its EXIF orientation is unreadable" in caplog.text and reason in caplog.text
    assert "the picture is left as stored (FFmpeg reads no rotation from it either)" in caplog.text


def test_an_orientation_of_two_values_is_read_as_its_first_as_ffmpeg_reads_it(tmp_path, caplog):
    """An Orientation SHORT of count 2: FFmpeg takes the first value (checked: (6, 6) is a quarter turn
    clockwise). ltxdist refused it and fell back to FFmpeg's rotation, which cannot mirror: (2, 2) came
    out upside down. Now the first value is read, mirror included, without a warning."""
    upright = _photo()
    for value in (6, 2):
        tiff = _broken(12, struct.pack("<HIHH", 3, 2, value, value))  # type SHORT, count 2
        path = exif_jpeg(tmp_path / f"count2_{value}.jpg", _as_stored(upright, value), tiff)
        with caplog.at_level("WARNING"):
            assert _mean_error(read_image(path, 48, 32), upright) < 4, value
    assert not caplog.records


def _animated_png(path: Path, rgb_HWC, tiff: bytes) -> Path:
    """A two-frame APNG (PyAV's apng muxer; FFmpeg decodes it with its `apng` decoder, not `png`) with an
    eXIf chunk holding `tiff` right after IHDR."""
    import av

    with av.open(str(path), "w", format="apng") as container:
        stream = container.add_stream("apng", rate=1)
        stream.height, stream.width = rgb_HWC.shape[:2]
        stream.pix_fmt = "rgb24"
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb_HWC), format="rgb24")
        for packet in [*stream.encode(frame), *stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    data = path.read_bytes()
    assert data[12:16] == b"IHDR" and b"acTL" in data, "expected an animated PNG"
    path.write_bytes(data[:33] + png_chunk(b"eXIf", tiff) + data[33:])
    return path


def test_an_animated_png_is_turned_upright_by_its_exif_orientation(tmp_path):
    upright = _photo()
    path = _animated_png(tmp_path / "anim.png", _as_stored(upright, 2), exif_tiff(2))
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "apng"
    assert _mean_error(read_image(path, 48, 32), upright) < 1


@pytest.mark.parametrize("writer", ["jpeg", "png"])
def test_orientation_0_is_read_as_absent(tmp_path, caplog, writer):
    """Some software writes Orientation 0 for "undefined": FFmpeg applies no rotation, and ltxdist now
    takes it as absent too; it used to warn about every such file."""
    stored = _as_stored(_photo(), 6)
    path = {"jpeg": exif_jpeg, "png": exif_png}[writer](tmp_path / f"p.{writer}", stored, exif_tiff(0))
    with caplog.at_level("WARNING"):
        assert _mean_error(read_image(path, 32, 48), stored) < 4
    assert not caplog.records


STILL_WRITERS = {"png": exif_png, "webp": exif_webp}


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("writer", sorted(STILL_WRITERS))
def test_png_and_webp_stills_are_turned_upright_by_their_exif_orientation(tmp_path, writer, orientation):
    """FFmpeg applies a PNG's eXIf chunk and a WebP's EXIF chunk as a display rotation too, with the
    same fault as for JPEG: the mirrored 2, 4, 5, 7 came out turned. Both are lossless here."""
    upright = _photo()
    tiff = exif_tiff(orientation, "II" if orientation % 2 else "MM")
    path = STILL_WRITERS[writer](tmp_path / f"photo.{writer}", _as_stored(upright, orientation), tiff)
    info = probe_video(path)
    assert (info.width, info.height) == (48, 32)
    assert _mean_error(read_image(path, 48, 32), upright) < 1


@pytest.mark.parametrize(
    ("writer", "options"),
    [("png", {"after_image": True}), ("webp", {"prefix": b"Exif\x00\x00"})],
    ids=["png-exif-after-the-image", "webp-exif-behind-a-jpeg-prefix"],
)
def test_other_places_of_exif_in_png_and_webp(tmp_path, writer, options):
    """A PNG's eXIf may follow the image data (FFmpeg applies it there too); some tools write a WebP's
    EXIF behind a JPEG-style "Exif\\0\\0" prefix (FFmpeg ignores it; its writer meant it)."""
    upright = _photo()
    path = STILL_WRITERS[writer](tmp_path / f"p.{writer}", _as_stored(upright, 7), exif_tiff(7), **options)
    assert _mean_error(read_image(path, 48, 32), upright) < 1


def _mutations(data: bytes, rng: random.Random, count: int):
    """Truncations, overwritten bytes (also 4-byte lengths, to huge values), inserted bytes."""
    for _ in range(count):
        kind, at = rng.randrange(4), rng.randrange(len(data))
        if kind == 0:
            yield data[:at]
        elif kind == 1:
            yield data[:at] + rng.randbytes(rng.randint(1, 4)) + data[at + 4 :]
        elif kind == 2:
            value = rng.choice([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, 0xFFFF, rng.randrange(1 << 32)])
            yield data[:at] + value.to_bytes(4, rng.choice(["big", "little"])) + data[at + 4 :]
        else:
            yield data[:at] + rng.randbytes(rng.randint(1, 16)) + data[at:]


def test_exif_readers_survive_mutated_files(tmp_path):
    """Cheap deterministic fuzzing of the JPEG, PNG and WebP readers: broken, truncated or hostile
    files give an Orientation, None or ExifError (nothing else), and no allocation beyond the file's
    size, however large a length they claim (tracemalloc sees what f.read(length) would allocate)."""
    rng, photo, tiff = random.Random(0), _photo(16, 8), exif_tiff(5)
    files = {
        "mjpeg": exif_jpeg(tmp_path / "s.jpg", photo, tiff, before=JFIF_APP0),
        "png": exif_png(tmp_path / "s.png", photo, tiff),
        "webp": exif_webp(tmp_path / "s.webp", photo, tiff),
    }
    outcomes = set()
    tracemalloc.start()
    try:
        for codec, original in files.items():
            for number, data in enumerate(_mutations(original.read_bytes(), rng, 100)):
                path = tmp_path / f"{codec}{number}"  # a new file: truncating one costs a flush here
                path.write_bytes(data)
                try:
                    outcomes.add(exif_orientation(path, codec))
                except ExifError:
                    outcomes.add("ExifError")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"{peak} bytes allocated at the peak"
    assert outcomes <= {None, "ExifError", *range(1, 9)} and {None, "ExifError", 5} <= outcomes


def test_a_photo_sample_is_prepared_upright(tmp_path, encoders, monkeypatch):
    """A still as a sample (video_path a photo, a one-frame bucket) takes the bucket of its upright
    shape, and the VAE gets the upright pixels: here Orientation 5 (stored transposed)."""
    from ltxdist.data.buckets import parse_buckets
    from ltxdist.data.manifest import ManifestRow
    from ltxdist.data.prepare.samples import SampleBuilder, SampleSpec

    upright = _photo(96, 64)
    path = exif_jpeg(tmp_path / "photo.jpg", _as_stored(upright, 5), exif_tiff(5))
    seen = _spy_video_encoder(encoders, monkeypatch)
    spec = SampleSpec(buckets=tuple(parse_buckets("96x64x1;64x96x1")), audio="off")
    sample = SampleBuilder(spec, encoders).build(ManifestRow(0, "photo row", path, "a photo"))
    assert sample.bucket == "96x64x1"
    assert _mean_error(seen[0][0], upright) < 4


def _count_decoding(monkeypatch) -> dict[str, int]:
    """Counts the files PyAV opens and the video frames their decoders hand out (real PyAV underneath:
    each container is wrapped, its decode() passed through)."""
    import av

    counts = {"opened": 0, "frames": 0}
    real_open = av.open

    class CountingContainer:
        def __init__(self, container):
            self._container = container

        def __getattr__(self, name):
            return getattr(self._container, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self._container.__exit__(*exc)

        def decode(self, *args, **kwargs):
            for frame in self._container.decode(*args, **kwargs):
                counts["frames"] += isinstance(frame, av.VideoFrame)
                yield frame

    def counting_open(*args, **kwargs):
        counts["opened"] += 1
        return CountingContainer(real_open(*args, **kwargs))

    monkeypatch.setattr(av, "open", counting_open)
    return counts


def test_a_portrait_phone_clip_goes_to_the_portrait_bucket(tmp_path, encoders, monkeypatch):
    """...decoding each frame once: the rotation comes from the first decoded frame (PyAV < 19 gives it
    nowhere else), and probing the size used to decode that frame a second time in a second open."""
    from ltxdist.data.buckets import parse_buckets
    from ltxdist.data.manifest import ManifestRow
    from ltxdist.data.prepare.samples import SampleBuilder, SampleSpec

    path = rotate_display(_corner_clip(tmp_path / "phone.mp4", frames=17), 90)
    seen = _spy_video_encoder(encoders, monkeypatch)
    spec = SampleSpec(buckets=tuple(parse_buckets("96x64x17;64x96x17")), audio="off")
    counts = _count_decoding(monkeypatch)
    sample = SampleBuilder(spec, encoders).build(ManifestRow(0, "phone row", path, "held upright"))
    assert sample.bucket == "64x96x17" and _bright_corner(seen[0][0]) == ["top-right"]
    assert counts == {"opened": 1, "frames": 17}


def test_a_pyav_without_frame_rotation_is_refused():
    """A PyAV without VideoFrame.rotation (< 14.1) was read as "no rotation": phone clips were prepared
    sideways without a word. ltxdist now refuses to import its media module there."""
    from ltxdist.data.media import check_pyav

    check_pyav()  # the installed one has it
    with pytest.raises(ImportError, match=r"needs PyAV >= 14\.1 .*found av 14\.0\.1: pip install"):
        check_pyav(type("VideoFrame", (), {}), "14.0.1")
