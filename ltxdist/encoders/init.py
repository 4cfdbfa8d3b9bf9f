"""Explicit random initialisation of the LTX encoders/decoders (VAEs, vocoder, text connectors, Gemma).

ltx-core creates parameters and statistics buffers with `torch.empty` (or zeros that the checkpoint is
meant to overwrite), so a random-weight model for tests must set every tensor it will save. Each rule
below says which tensors it covers; a tensor no rule covers is an error, so a new ltx-core layer cannot
slip through holding allocator garbage. Same spirit as `ltxdist.models.init` for the transformer.
"""

from __future__ import annotations

import math

import torch

# Constant buffers that ltx-core computes in the constructor (anti-aliasing sinc/kaiser filters):
# they are deterministic, not learned, so they are kept as built.
_CONSTANT_BUFFER_LEAVES = frozenset({"filter"})


def _mel_stft_bases(n_fft: int, n_mels: int, sample_rate: int) -> dict[str, torch.Tensor]:
    """Causal STFT bases (DFT rows x Hann window) and a slaney mel filterbank, as the BWE expects."""
    import torchaudio

    n_freqs = n_fft // 2 + 1
    n = torch.arange(n_fft, dtype=torch.float64)
    k = torch.arange(n_freqs, dtype=torch.float64)[:, None]
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
    angle = 2 * math.pi * k * n / n_fft
    forward = torch.cat([torch.cos(angle) * window, -torch.sin(angle) * window]).unsqueeze(1)
    inverse = torch.linalg.pinv(forward.squeeze(1)).T.unsqueeze(1)
    mel = torchaudio.functional.melscale_fbanks(
        n_freqs, 0.0, sample_rate / 2.0, n_mels, sample_rate, norm="slaney", mel_scale="slaney"
    ).T
    return {"forward_basis": forward.float(), "inverse_basis": inverse.float(), "mel_basis": mel.float()}


def _rule(name: str, shape: torch.Size, generator: torch.Generator) -> torch.Tensor | None:
    """New value for one state-dict tensor, or None when no rule matches."""
    leaf = name.rsplit(".", 1)[-1]
    randn = lambda: torch.randn(shape, generator=generator)  # noqa: E731
    if leaf == "mean-of-means":
        return 0.1 * randn()
    if leaf == "std-of-means":
        # Strictly positive: the latents are divided by it.
        return torch.exp(0.1 * randn())
    if leaf == "learnable_registers":
        # Same distribution ltx-core's constructor uses (uniform in [-1, 1]).
        return torch.rand(shape, generator=generator) * 2.0 - 1.0
    if leaf in {"alpha", "beta"}:
        # Snake / SnakeBeta log-scale parameters: exp(~0) ~ 1.
        return 0.1 * randn()
    if leaf in {"scale_shift_table", "last_scale_shift_table"}:
        return randn() / math.sqrt(shape[-1])
    if leaf in {"per_channel_scale1", "per_channel_scale2"}:
        return torch.zeros(shape)
    if leaf == "timestep_scale_multiplier":
        return torch.full(shape, 1000.0)
    if leaf == "bias" or leaf.endswith("_bias"):
        return 0.02 * randn()
    if len(shape) >= 2:
        # Conv / linear / embedding weights: unit-variance outputs.
        fan_in = math.prod(shape[1:])
        return randn() / math.sqrt(fan_in)
    if leaf == "weight" and len(shape) == 1:
        # Norm gains: near one but not exactly, so a bug that drops them shows up.
        return 1.0 + 0.1 * randn()
    return None


@torch.no_grad()
def init_encoder_weights(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Set every saved tensor of `module` in place; raises on a tensor no rule covers."""
    # MelSTFT bases are physics, not weights: compute them so a random BWE still sees real mel frames.
    stft_values: dict[str, torch.Tensor] = {}
    for prefix, sub in module.named_modules():
        if type(sub).__name__ == "MelSTFT":
            n_fft = sub.stft_fn.forward_basis.shape[-1]
            n_mels = sub.mel_basis.shape[0]
            rate = getattr(module, "input_sampling_rate", 16000)
            for key, value in _mel_stft_bases(n_fft, n_mels, rate).items():
                full = f"{prefix}.mel_basis" if key == "mel_basis" else f"{prefix}.stft_fn.{key}"
                stft_values[full] = value
    state = module.state_dict(keep_vars=True)
    for name, tensor in state.items():
        if name in stft_values:
            tensor.copy_(stft_values[name].to(tensor.dtype))
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf in _CONSTANT_BUFFER_LEAVES and not isinstance(tensor, torch.nn.Parameter):
            if tensor.is_meta or not torch.isfinite(tensor).all():
                raise ValueError(f"constant buffer {name} was not computed by its constructor")
            continue
        if not tensor.is_floating_point():
            continue
        value = _rule(name, tensor.shape, generator)
        if value is None:
            raise ValueError(f"no initialisation rule for {name} with shape {tuple(tensor.shape)}")
        tensor.copy_(value.to(tensor.dtype))
