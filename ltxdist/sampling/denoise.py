"""Flow-matching Euler sampling over the LTX-2.3 sigma schedule (ltx-core's `EulerDiffusionStep`).

Per step: guided x0 predictions, conditioning tokens reset to their clean latents (denoise mask 0),
then x <- x + (x - x0) / sigma * (sigma_next - sigma). The last step (sigma_next = 0) lands on x0.
Legend: B batch (1), T tokens, C channels.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from ltx_core.components.diffusion_steps import EulerDiffusionStep
from ltx_core.types import LatentState
from tqdm.auto import tqdm

from ltxdist._ltx_core import Modality
from ltxdist.sampling.conditioning import InitialStates
from ltxdist.sampling.guidance import AudioReference, Guidance, TextContext, X0Predictor, guided_x0


def keep_clean_tokens(x0_BTC: torch.Tensor, state: LatentState) -> torch.Tensor:
    """Conditioning tokens (denoise mask 0) keep their clean latent whatever the guidance did."""
    mask = state.denoise_mask
    return (x0_BTC.float() * mask + state.clean_latent.float() * (1 - mask)).to(x0_BTC.dtype)


def _modality(state: LatentState, sigma: float, context: torch.Tensor, mask: torch.Tensor | None) -> Modality:
    b = state.latent.shape[0]
    return Modality(
        latent=state.latent,
        sigma=torch.full((b,), sigma, device=state.latent.device, dtype=torch.float32),
        timesteps=state.denoise_mask * sigma,  # (B, T, 1): 0 on clean conditioning tokens
        positions=state.positions,
        context=context.to(device=state.latent.device, dtype=state.latent.dtype),
        context_mask=mask,
        attention_mask=state.attention_mask,
    )


@torch.no_grad()
def euler_sample(
    predict: X0Predictor,
    states: InitialStates,
    sigmas: torch.Tensor,
    *,
    prompt: TextContext,
    negative: TextContext | None,
    guidance: Guidance,
    progress: bool = True,
    desc: str = "sampling",
) -> InitialStates:
    """Denoise `states` in place of a copy; returns the final states (conditioning tokens included)."""
    stepper = EulerDiffusionStep()
    video, audio = states.video, states.audio
    reference = (
        AudioReference(states.audio_ref_tokens, states.key_keep, states.query_keep)
        if audio is not None and states.audio_ref_tokens
        else None
    )
    sig = sigmas.tolist()  # host floats: no device sync inside the loop
    for i in tqdm(range(len(sig) - 1), desc=desc, disable=not progress, leave=False, unit="step"):
        v_in = _modality(video, sig[i], prompt.video_BSC, prompt.mask_BS)
        a_in = _modality(audio, sig[i], prompt.audio_BSC, prompt.mask_BS) if audio is not None else None
        x0_v, x0_a = guided_x0(
            predict,
            v_in,
            a_in,
            t_video_BT1=v_in.timesteps,
            t_audio_BT1=a_in.timesteps if a_in is not None else None,
            guidance=guidance,
            negative=negative,
            reference=reference,
        )
        video = replace(video, latent=stepper.step(video.latent, keep_clean_tokens(x0_v, video), sigmas, i))
        if audio is not None:
            assert x0_a is not None
            audio = replace(
                audio, latent=stepper.step(audio.latent, keep_clean_tokens(x0_a, audio), sigmas, i)
            )
    return replace(states, video=video, audio=audio)
