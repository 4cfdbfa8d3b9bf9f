"""Audio VAE: waveform <-> cached audio latents (8, T, 16), with ltx-core's encoder/decoder/vocoder."""

from __future__ import annotations

from pathlib import Path

import torch
from ltx_core.model.audio_vae import decode_audio, encode_audio
from ltx_core.types import Audio

import ltxdist._ltx_core  # noqa: F401  (import order)
from ltxdist.encoders.components import AUDIO_DECODER, AUDIO_ENCODER, VOCODER
from ltxdist.encoders.loading import build_component
from ltxdist.models.checkpoint_file import read_checkpoint_info

LATENT_DOWNSAMPLE = 4  # mel frames per latent frame (ltx-core's LATENT_DOWNSAMPLE_FACTOR)


class AudioVAE:
    def __init__(self, checkpoint: str | Path, device: torch.device, dtype: torch.dtype):
        self.checkpoint, self.device, self.dtype = Path(checkpoint), device, dtype
        section = read_checkpoint_info(checkpoint).config.get("audio_vae", {})
        params = section.get("model", {}).get("params", {})
        stft = section.get("preprocessing", {}).get("stft", {})
        # The rate and hop the encoder's mel front-end expects (16 kHz and 160 for LTX-2.3).
        self.sample_rate: int = int(params.get("sampling_rate", 16000))
        self.hop_length: int = int(stft.get("hop_length", 160))
        self._encoder: torch.nn.Module | None = None
        self._decoder: torch.nn.Module | None = None
        self._vocoder: torch.nn.Module | None = None

    @property
    def latents_per_second(self) -> float:
        return self.sample_rate / self.hop_length / LATENT_DOWNSAMPLE

    def latent_frames(self, seconds: float) -> int:
        """Latent length the model generates for `seconds` of video (ltx-core's AudioLatentShape rule)."""
        return round(seconds * self.latents_per_second)

    @property
    def encoder(self) -> torch.nn.Module:
        if self._encoder is None:
            self._encoder = build_component(
                self.checkpoint, AUDIO_ENCODER, device=self.device, dtype=self.dtype
            )
        return self._encoder

    def release_encoder(self) -> None:
        """Drop the encoder (its weights live on `device`); a later `encode` builds it again."""
        self._encoder = None

    @torch.inference_mode()
    def encode(self, waveform_CN: torch.Tensor, num_latent_frames: int) -> torch.Tensor:
        """Stereo waveform (2, N) at `sample_rate` -> latents (8, num_latent_frames, 16).

        The causal encoder yields about N / hop / 4 frames; the result is cut (or, by at most a frame
        of rounding, edge-padded) to exactly the length the model uses for the clip's duration.
        """
        if waveform_CN.ndim != 2 or waveform_CN.shape[0] != 2:
            raise ValueError(f"audio VAE expects a stereo waveform (2, N), got {tuple(waveform_CN.shape)}")
        audio = Audio(
            waveform=waveform_CN.unsqueeze(0).float().to(self.device), sampling_rate=self.sample_rate
        )
        z = encode_audio(audio, self.encoder)[0].float().cpu()
        have = z.shape[1]
        if have >= num_latent_frames:
            return z[:, :num_latent_frames].contiguous()
        if num_latent_frames - have > 1:
            raise ValueError(f"audio encoder gave {have} latent frames, expected {num_latent_frames}")
        return torch.cat([z, z[:, -1:]], dim=1)

    @torch.inference_mode()
    def decode(self, latents_CTM: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(8, T, 16) -> (stereo waveform (2, N), sample rate) through the decoder and vocoder."""
        if self._decoder is None:
            self._decoder = build_component(
                self.checkpoint, AUDIO_DECODER, device=self.device, dtype=self.dtype
            )
            self._vocoder = build_component(self.checkpoint, VOCODER, device=self.device, dtype=self.dtype)
        assert self._vocoder is not None
        out = decode_audio(latents_CTM.unsqueeze(0).to(self.device, self.dtype), self._decoder, self._vocoder)
        return out.waveform.float().cpu(), int(out.sampling_rate)
