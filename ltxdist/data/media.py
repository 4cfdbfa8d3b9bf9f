"""Decoding and encoding media with PyAV: video frames, the audio track, still images, mp4 output.

Every failure is a `MediaError` naming the file, so a bad clip can be skipped and reported.
Legend: F frames, H height, W width, C channels, N audio samples.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F

from ltxdist.data.exif import ExifError, exif_orientation
from ltxdist.io import atomic_file

log = logging.getLogger(__name__)


class MediaError(ValueError):
    """A media file is missing, unreadable, or lacks what was asked of it."""


class NoAudioError(MediaError):
    """The file decodes but has no audio stream."""


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    width: int
    height: int
    fps: float
    num_frames: int  # container's count or a duration estimate; confirmed by decoding
    has_audio: bool


# PyAV gives a file's display rotation (phones' portrait clips) as VideoFrame.rotation since 14.1. On an
# older PyAV they would be prepared lying on their side with no error anywhere: refuse to run instead.
PYAV_MIN_VERSION = "14.1"


def check_pyav(frame_type: type = av.VideoFrame, version: str = av.__version__) -> None:
    if not hasattr(frame_type, "rotation"):
        raise ImportError(
            f"ltxdist needs PyAV >= {PYAV_MIN_VERSION} (VideoFrame.rotation, to turn rotated phone clips "
            f"upright); found av {version}: pip install 'av>={PYAV_MIN_VERSION},<19'"
        )


check_pyav()

# 8K per side. A larger frame (a corrupt or hostile header: a few hundred bytes of PNG can claim
# 16000x16000) would take gigabytes once converted to RGB and float for resizing.
MAX_FRAME_SIDE = 8192
MAX_CRF = 51  # libx264's highest (8-bit)


def _check_frame_size(path: Path, width: int, height: int) -> None:
    if width > MAX_FRAME_SIDE or height > MAX_FRAME_SIDE:
        raise MediaError(
            f"{path}: frame size {width}x{height} exceeds {MAX_FRAME_SIDE} pixels per side; "
            "downscale the file first (or it is corrupt)"
        )


def _video_codec(path: Path, stream: av.video.stream.VideoStream) -> av.video.codeccontext.VideoCodecContext:
    # A truncated file can lose the codec parameters: PyAV then has no codec context at all.
    if stream.codec_context is None:
        raise MediaError(f"{path}: the video stream has no decoder parameters (corrupt or truncated file?)")
    return stream.codec_context


def _open(path: Path) -> av.container.InputContainer:
    if not path.is_file():
        raise MediaError(f"{path}: file not found")
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise MediaError(f"{path}: cannot open as media ({exc})") from exc


@dataclass(frozen=True)
class Orientation:
    """How stored pixels become upright: mirrored left-right first (`mirror`), then turned `turns`
    quarter turns counterclockwise (torch.rot90's k)."""

    turns: int = 0
    mirror: bool = False

    def apply(self, rgb_HWC: torch.Tensor) -> torch.Tensor:
        if self.mirror:
            rgb_HWC = torch.flip(rgb_HWC, dims=(1,))
        if self.turns:
            rgb_HWC = torch.rot90(rgb_HWC, self.turns, dims=(0, 1))  # (H, W) plane: k > 0 is counterclockwise
        return rgb_HWC


# EXIF Orientation -> Orientation. The tag says where the stored rows and columns go on display: 6 (a
# phone held upright) is a quarter turn clockwise (k = 3), 8 counterclockwise; the mirrored ones are 2
# (left-right), 4 (top-bottom = mirror + half turn), 5 (transpose = mirror + counterclockwise) and 7.
EXIF_ORIENTATIONS = {
    1: Orientation(0),
    2: Orientation(0, mirror=True),
    3: Orientation(2),
    4: Orientation(2, mirror=True),
    5: Orientation(1, mirror=True),
    6: Orientation(3),
    7: Orientation(3, mirror=True),
    8: Orientation(1),
}


def _quarter_turns(path: Path, degrees: float) -> int:
    """How many quarter turns counterclockwise (torch.rot90's k) the file's display matrix asks for.

    Phones store portrait clips as landscape frames plus a display matrix (the mp4 tkhd matrix); players
    and ffmpeg's autorotate turn them upright. PyAV's `frame.rotation` is FFmpeg's
    av_display_rotation_get: the angle the matrix rotates the frame counterclockwise, so -90 (a phone
    held upright) means a quarter turn clockwise, what ffmpeg's autorotate does with transpose=clock.
    Mirroring in the matrix is not applied (rare: some front cameras)."""
    turns = round(degrees / 90)
    if abs(degrees - 90 * turns) > 1:
        raise MediaError(
            f"{path}: its display matrix rotates the picture by {degrees} degrees, not a multiple of 90; "
            "re-encode the file upright first (ffmpeg -i IN -c:a copy OUT applies the rotation)"
        )
    return turns % 4


def _warn_unreadable_exif(path: Path, problem: ExifError, turns: int) -> None:
    """A malformed EXIF block: what FFmpeg made of it (its display rotation, `turns` quarter turns
    counterclockwise) is applied. For every broken block tried that is none; should FFmpeg read a turn
    from a block ltxdist refuses, the warning says which turn was applied (FFmpeg cannot mirror)."""
    if turns == 0:
        outcome = "the picture is left as stored (FFmpeg reads no rotation from it either)"
    else:
        outcome = f"FFmpeg's reading of it is applied instead: turned {90 * (4 - turns)} degrees clockwise"
    log.warning("%s: its EXIF orientation is unreadable (%s); %s", path, problem, outcome)


class VideoFile:
    """One open video file, decoded once: `info()` (its header, and the display rotation, which PyAV
    < 19 gives only on decoded frames) and then `read()` continue the same decoding, so the first frame
    is decoded once whether or not the size was asked for first. Made by `open_video`."""

    def __init__(self, path: Path, container: av.container.InputContainer):
        if not container.streams.video:
            raise MediaError(f"{path}: no video stream")
        self.path, self.container = path, container
        self.stream = container.streams.video[0]
        codec = _video_codec(path, self.stream)
        _check_frame_size(path, codec.width or 0, codec.height or 0)
        self.stream.thread_type = "AUTO"
        self._decoded = container.decode(self.stream)
        self._first: av.VideoFrame | None = None
        self._first_error: BaseException | None = None
        self._peeked = self._read = False
        self._orientation: Orientation | None = None

    def _first_frame(self) -> av.VideoFrame | None:
        """The first frame, decoded once and kept for `read`; None when nothing decodes (`read` then
        reports the file)."""
        if not self._peeked:
            self._peeked = True
            try:
                self._first = next(self._decoded, None)
            except (av.error.FFmpegError, OSError) as exc:
                self._first_error = exc
        return self._first

    def orientation(self) -> Orientation:
        """What makes the picture upright: a still's EXIF Orientation (JPEG, PNG, WebP), else the display
        rotation (see `_quarter_turns`). FFmpeg gives a still's EXIF Orientation as a display rotation
        too, but reads the mirrored ones (2, 4, 5, 7) as rotations (a left-right mirror as a half turn):
        the tag is read from the file instead (ltxdist.data.exif)."""
        if self._orientation is None:
            try:
                exif = exif_orientation(self.path, self.stream.codec_context.name)
            except ExifError as exc:
                self._orientation = Orientation(self._display_turns())
                _warn_unreadable_exif(self.path, exc, self._orientation.turns)
            else:
                self._orientation = (
                    EXIF_ORIENTATIONS[exif] if exif is not None else Orientation(self._display_turns())
                )
        return self._orientation

    def _display_turns(self) -> int:
        first = self._first_frame()
        return 0 if first is None else _quarter_turns(self.path, first.rotation)

    def info(self) -> VideoInfo:
        """Size as displayed: a clip stored landscape with a quarter-turn display rotation is portrait."""
        path, stream, container = self.path, self.stream, self.container
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate or float(rate) <= 0:
            raise MediaError(f"{path}: unknown frame rate")
        fps = float(rate)
        frames = int(stream.frames or 0)
        if frames <= 0 and stream.duration and stream.time_base:
            frames = int(stream.duration * stream.time_base * fps)
        if frames <= 0 and container.duration:
            frames = int(container.duration / av.time_base * fps)
        codec = _video_codec(path, stream)
        if not codec.width or not codec.height:
            raise MediaError(f"{path}: video stream has no size (corrupt header?)")
        width, height = codec.width, codec.height
        if self.orientation().turns % 2:
            width, height = height, width
        return VideoInfo(path, width, height, fps, frames, bool(container.streams.audio))

    def _frames(self) -> Iterator[av.VideoFrame]:
        first = self._first_frame()
        if self._first_error is not None:
            raise self._first_error
        if first is not None:
            yield first
            yield from self._decoded

    def read(self, num_frames: int, width: int | None, height: int | None) -> torch.Tensor:
        """The first `num_frames` frames, turned upright (`info`'s size), resized + centre-cropped to
        (width, height), or at their own upright size when both are None: uint8 (F, H, W, 3). Once per
        open file: decoding goes forward only.

        Fewer frames than asked means the clip is that long (decoding reached its end)."""
        if (width is None) != (height is None):
            raise ValueError(f"VideoFile.read: give width and height, or neither (got {width}x{height})")
        if self._read:
            raise RuntimeError(f"{self.path}: VideoFile.read() is once per open_video()")
        self._read = True
        path, frames = self.path, []
        orientation = self.orientation()
        try:
            for frame in self._frames():
                _check_frame_size(path, frame.width, frame.height)  # a header may not have said
                rgb = orientation.apply(torch.from_numpy(frame.to_ndarray(format="rgb24")))
                frames.append(rgb.contiguous() if width is None else resize_crop(rgb, width, height))
                if len(frames) == num_frames:
                    break
        except (av.error.FFmpegError, OSError) as exc:
            raise MediaError(f"{path}: decoding failed after {len(frames)} frames ({exc})") from exc
        if not frames:
            raise MediaError(f"{path}: no decodable video frames (corrupt or truncated file?)")
        return torch.stack(frames)


@contextmanager
def open_video(path: str | Path) -> Iterator[VideoFile]:
    """A video file opened once for `info()` and then `read()` (see VideoFile)."""
    path = Path(path)
    with _open(path) as container:
        yield VideoFile(path, container)


def probe_video(path: str | Path) -> VideoInfo:
    """Size as displayed (`VideoFile.info`); to read the frames too, open the file once: `open_video`."""
    with open_video(path) as video:
        return video.info()


def resize_crop(frame_HWC: torch.Tensor, width: int, height: int, *, antialias: bool = True) -> torch.Tensor:
    """Scale to cover (width, height) keeping the aspect ratio (bilinear), then centre-crop. uint8 in,
    uint8 out. `antialias=False` only for the conditioning image (`read_conditioning_image`)."""
    h, w = frame_HWC.shape[-3], frame_HWC.shape[-2]
    if (w, h) == (width, height):
        return frame_HWC
    scale = max(width / w, height / h)
    new_w, new_h = max(width, math.ceil(w * scale - 1e-6)), max(height, math.ceil(h * scale - 1e-6))
    x = frame_HWC.permute(2, 0, 1).unsqueeze(0).float()
    # antialias: downscaling a 1080p clip to a 32x-divisible bucket without it aliases badly.
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=antialias, align_corners=False)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    x = x[0, :, top : top + height, left : left + width]
    return x.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous()


def read_frames(path: str | Path, num_frames: int, width: int, height: int) -> torch.Tensor:
    """The first `num_frames` frames, upright, resized + centre-cropped (`VideoFile.read`)."""
    with open_video(path) as video:
        return video.read(num_frames, width, height)


def read_image(path: str | Path, width: int, height: int) -> torch.Tensor:
    """A still image (png, jpg, ... or the first frame of a video), resized + cropped: uint8 (H, W, 3)."""
    return read_frames(path, 1, width, height)[0]


def read_conditioning_image(path: str | Path, width: int, height: int, crf: int) -> torch.Tensor:
    """A still to condition on, prepared as ltx-pipelines prepares one: at its own size, through H.264 at
    `crf` and back (`h264_still`; 0: not re-compressed), then resized + centre-cropped with plain bilinear
    interpolation, without antialiasing, as ltx-pipelines' resize_and_center_crop: uint8 (H, W, 3).

    Why: the model learnt first frames from compressed video; a pristine still is out of distribution
    (ltx-pipelines re-compresses at CRF 33 for LTX-2.0 / 2.3 for that reason). And a LoRA should be
    validated on the image it will be used with: on sharp detail downscaled 1.5-5x, plain bilinear
    differs from the antialiased resize of training data by a mean 3-12 levels (under 1 on soft
    pictures; docs/sampling.md)."""
    with open_video(path) as video:
        still = video.read(1, None, None)[0]
    if crf:
        still = h264_still(still, crf)
    return resize_crop(still, width, height, antialias=False)


def h264_still(image_HWC: torch.Tensor, crf: int) -> torch.Tensor:
    """One uint8 image (H, W, 3) as it comes back from a one-frame libx264 mp4 at `crf` (4:2:0, preset
    veryfast), encoded and decoded in memory. An odd last row / column is dropped first (4:2:0 needs even
    sides); an image under 2 pixels on a side is returned as is (nothing to encode)."""
    if not 0 <= crf <= MAX_CRF:
        raise ValueError(f"H.264 CRF must be in 0..{MAX_CRF}, got {crf}")
    h, w = image_HWC.shape[0] // 2 * 2, image_HWC.shape[1] // 2 * 2
    if min(h, w) < 2:
        return image_HWC
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        # One frame at rate 1, as ltx-pipelines encodes its conditioning image.
        stream = _add_h264_stream(container, w, h, Fraction(1), crf)
        _encode_video(container, stream, image_HWC[None, :h, :w].cpu().numpy())
    buffer.seek(0)
    with av.open(buffer, mode="r") as container:
        frame = next(container.decode(video=0))
        return torch.from_numpy(frame.to_ndarray(format="rgb24"))


def read_audio(
    path: str | Path, sample_rate: int, seconds: float | None = None, pad: bool = True
) -> torch.Tensor:
    """The audio track from its start, resampled to `sample_rate` stereo float32: (2, N). A mono track
    is copied to both channels at its own level; more than two channels are downmixed to stereo.

    With `seconds`, at most round(seconds * sample_rate) samples, and with `pad` exactly that many:
    padded with silence when the track ends early (tracks are often a few ms shorter than the video).
    """
    path = Path(path)
    want = None if seconds is None else round(seconds * sample_rate)
    chunks: list[np.ndarray] = []
    have = 0
    with _open(path) as container:
        if not container.streams.audio:
            raise NoAudioError(f"{path}: no audio stream")
        stream = container.streams.audio[0]
        # Resample while decoding: any rate becomes the VAE's rate, more than two channels are downmixed.
        # Mono stays mono here and is duplicated below: FFmpeg's mono->stereo rematrix lowers the level by
        # 3 dB, so a mono clip would reach the VAE quieter than the same sound recorded in stereo.
        if stream.codec_context is None:  # a truncated file can lose the codec parameters
            raise MediaError(f"{path}: the audio stream has no decoder parameters (corrupt or truncated?)")
        mono = stream.channels == 1
        resampler = av.AudioResampler(format="fltp", layout="mono" if mono else "stereo", rate=sample_rate)
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray())
                    have += chunks[-1].shape[1]
                if want is not None and have >= want:
                    break
            else:
                for out in resampler.resample(None):
                    chunks.append(out.to_ndarray())
                    have += chunks[-1].shape[1]
        except (av.error.FFmpegError, OSError) as exc:
            raise MediaError(f"{path}: audio decoding failed ({exc})") from exc
    if not chunks or sum(c.shape[1] for c in chunks) == 0:
        raise NoAudioError(f"{path}: the audio stream holds no samples")
    wave = torch.from_numpy(np.concatenate(chunks, axis=1)).expand(2, -1)  # mono: both channels, unit gain
    if want is not None:
        wave = wave[:, :want]
        if pad:
            wave = F.pad(wave, (0, max(0, want - wave.shape[1])))
    return wave.float().contiguous()


def write_video(
    path: str | Path,
    frames_FHWC: torch.Tensor,
    fps: float,
    audio: tuple[torch.Tensor, int] | None = None,
    crf: int = 18,
) -> Path:
    """Write an H.264 (+ AAC) mp4 atomically. `audio` is (waveform (C, N) in [-1, 1], sample rate)."""
    path = Path(path)
    frames = frames_FHWC.cpu().numpy()
    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise MediaError(f"{path}: H.264 needs even width and height, got {w}x{h}")
    rate = Fraction(fps).limit_denominator(1001)
    with atomic_file(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        vstream = _add_h264_stream(container, w, h, rate, crf)
        astream = None
        if audio is not None:
            wave, sr = audio
            astream = container.add_stream("aac", rate=sr)
            astream.layout = "stereo" if wave.shape[0] == 2 else "mono"
        _encode_video(container, vstream, frames)
        if astream is not None and audio is not None:
            _encode_audio(container, astream, audio[0], audio[1])
    return path


def _add_h264_stream(
    container: av.container.OutputContainer, width: int, height: int, rate: Fraction, crf: int
) -> av.video.stream.VideoStream:
    stream = container.add_stream("libx264", rate=rate)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.options = {"crf": str(crf), "preset": "veryfast"}
    return stream


def _encode_video(
    container: av.container.OutputContainer, stream: av.video.stream.VideoStream, frames_FHWC: np.ndarray
) -> None:
    """rgb24 frames, converted to the stream's yuv420p by the encoder, then the encoder flushed."""
    for i in range(frames_FHWC.shape[0]):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames_FHWC[i]), format="rgb24")
        frame.pts = i
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def _encode_audio(
    container: av.container.OutputContainer,
    stream: av.audio.stream.AudioStream,
    wave_CN: torch.Tensor,
    sample_rate: int,
) -> None:
    data = wave_CN.clamp(-1, 1).float().cpu().numpy()
    layout = "stereo" if data.shape[0] == 2 else "mono"
    chunk = 1024  # AAC frame size
    for start in range(0, data.shape[1], chunk):
        block = np.ascontiguousarray(data[:, start : start + chunk])
        frame = av.AudioFrame.from_ndarray(block, format="fltp", layout=layout)
        frame.sample_rate = sample_rate
        frame.pts = start
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
