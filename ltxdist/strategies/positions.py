"""Token layout and RoPE positions, built with ltx-core's own patchifiers so training matches inference.

Legend: B batch, C channels, F/H/W latent frames/height/width, T tokens.
"""

from __future__ import annotations

import torch

from ltxdist._ltx_core import (
    AudioLatentShape,
    AudioPatchifier,
    SpatioTemporalScaleFactors,
    VideoLatentPatchifier,
    VideoLatentShape,
    get_pixel_coords,
)

_VIDEO_PATCHIFIER = VideoLatentPatchifier(patch_size=1)
_AUDIO_PATCHIFIER = AudioPatchifier(patch_size=1)
VIDEO_SCALE = SpatioTemporalScaleFactors.default()


def video_tokens(lat_BCFHW: torch.Tensor) -> torch.Tensor:
    return _VIDEO_PATCHIFIER.patchify(lat_BCFHW)  # (B, F*H*W, C)


def audio_tokens(lat_BCTM: torch.Tensor) -> torch.Tensor:
    return _AUDIO_PATCHIFIER.patchify(lat_BCTM)  # (B, T, C*M)


def video_positions(
    lat_BCFHW: torch.Tensor, fps_B: torch.Tensor, dtype: torch.dtype, spatial_scale: int = 1
) -> torch.Tensor:
    """(B, 3, T, 2) [start, end) bounds: time in seconds (causal first frame), H/W in pixels.

    Rounded to `dtype` as ltx-core's VideoLatentTools does for the generated video, so the positions the
    LoRA sees in training are the ones it sees at inference. `spatial_scale` multiplies H/W (IC-LoRA
    references encoded at a downscaled resolution).
    """
    b, c, f, h, w = lat_BCFHW.shape
    grid = _VIDEO_PATCHIFIER.get_patch_grid_bounds(VideoLatentShape(1, c, f, h, w), device=lat_BCFHW.device)
    pix = get_pixel_coords(grid, VIDEO_SCALE, causal_fix=True).float()  # (1, 3, T, 2)
    pix = pix.expand(b, -1, -1, -1).clone()
    pix[:, 0] = pix[:, 0] / fps_B.to(pix.device).view(b, 1, 1)
    if spatial_scale != 1:
        pix[:, 1:] = pix[:, 1:] * spatial_scale
    return pix.to(dtype)


def audio_positions(lat_BCTM: torch.Tensor, shift: int = 0) -> torch.Tensor:
    """(B, 1, T, 2) [start, end) in seconds, float32 (as ltx-core's AudioLatentTools leaves them)."""
    b, c, t, m = lat_BCTM.shape
    patchifier = _AUDIO_PATCHIFIER if shift == 0 else AudioPatchifier(patch_size=1, shift=shift)
    return patchifier.get_patch_grid_bounds(AudioLatentShape(b, c, t, m), device=lat_BCTM.device)


def first_frame_token_mask(lat_BCFHW: torch.Tensor) -> torch.Tensor:
    """(T,) bool: True for the tokens of latent frame 0 (patchify order is f, h, w)."""
    _, _, f, h, w = lat_BCFHW.shape
    mask = torch.zeros(f, h, w, dtype=torch.bool, device=lat_BCFHW.device)
    mask[0] = True
    return mask.flatten()
