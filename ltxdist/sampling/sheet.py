"""Contact sheets: many same-sized clips tiled into one video (and a still PNG of its middle frame).

Legend: F frames, H height, W width (pixels), uint8 RGB throughout.
"""

from __future__ import annotations

from pathlib import Path

import av
import torch
import torch.nn.functional as F

from ltxdist.data.media import write_video
from ltxdist.io import atomic_file

GAP = 4  # pixels of dark grey between cells (even: H.264 needs even sizes)
_GAP_VALUE = 40


def resize(frames_FHWC: torch.Tensor, width: int, height: int) -> torch.Tensor:
    if frames_FHWC.shape[1:3] == (height, width):
        return frames_FHWC
    x = frames_FHWC.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def cell_size(width: int, height: int, columns: int, max_width: int) -> tuple[int, int]:
    """Cell size (even numbers) so that `columns` cells and their gaps fit in `max_width` pixels."""
    scale = min(1.0, (max_width - GAP * (columns + 1)) / (columns * width))
    w = max(2, int(width * scale) // 2 * 2)
    h = max(2, int(height * scale) // 2 * 2)
    return w, h


def tile(rows: list[list[torch.Tensor]], width: int, height: int) -> torch.Tensor:
    """rows[r][c] clips (F, H, W, 3) -> one (F, H_sheet, W_sheet, 3) clip; cells resized to width x height.
    Clips shorter than the longest hold their last frame."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    frames = max(c.shape[0] for r in rows for c in r)
    sheet = torch.full(
        (frames, GAP + n_rows * (height + GAP), GAP + n_cols * (width + GAP), 3),
        _GAP_VALUE,
        dtype=torch.uint8,
    )
    for i, row in enumerate(rows):
        for j, clip in enumerate(row):
            cell = resize(clip, width, height)
            if cell.shape[0] < frames:
                cell = torch.cat([cell, cell[-1:].expand(frames - cell.shape[0], -1, -1, -1)])
            top, left = GAP + i * (height + GAP), GAP + j * (width + GAP)
            sheet[:, top : top + height, left : left + width] = cell
    return sheet


def write_png(path: str | Path, frame_HWC: torch.Tensor) -> Path:
    """One RGB frame as a PNG, encoded by PyAV (no image library needed), written atomically."""
    path = Path(path)
    frame = frame_HWC.contiguous().cpu().numpy()
    with atomic_file(path) as tmp, av.open(str(tmp), mode="w", format="image2") as container:
        stream = container.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = frame.shape[1], frame.shape[0], "rgb24"
        for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_contact_sheet(path_mp4: str | Path, sheet_FHWC: torch.Tensor, fps: float) -> tuple[Path, Path]:
    """The sheet as an mp4 (no audio: cells have one track each) and its middle frame as a PNG."""
    video = write_video(path_mp4, sheet_FHWC, fps)
    still = write_png(Path(path_mp4).with_suffix(".png"), sheet_FHWC[sheet_FHWC.shape[0] // 2])
    return video, still


def mean_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean absolute difference, scaled to [0, 1] for uint8 frames."""
    scale = 255.0 if a.dtype == torch.uint8 else 1.0
    n = min(a.shape[-1], b.shape[-1]) if a.ndim == 2 else None  # waveforms may differ by a few samples
    if n is not None:
        a, b = a[..., :n], b[..., :n]
    return float((a.float() - b.float()).abs().mean()) / scale
