"""Sampling: LTX-2.3 video + audio generation with LoRAs (CLI, training validation, evaluation grids).

Modules: `schedule` (sigma schedule), `guidance` (CFG + STG through ltx-core's guider),
`conditioning` (initial states, IC / ID references), `denoise` (Euler loop), `loading` (base + LoRAs),
`pipeline` (`Sampler`: text -> latents -> mp4), `sheet` + `grid` (evaluation protocol), `cli`.
"""

from ltxdist.sampling.conditioning import ConditioningLatents, IdReferenceOptions, VideoSpec
from ltxdist.sampling.guidance import Guidance, GuidanceParams, TextContext
from ltxdist.sampling.loading import LoRAChoice, fused_transformer, inject_lora_file, lora_strength
from ltxdist.sampling.pipeline import References, Sampler, SampleRequest, SampleResult, write_sample
from ltxdist.sampling.schedule import sigma_schedule

__all__ = [
    "ConditioningLatents",
    "Guidance",
    "GuidanceParams",
    "IdReferenceOptions",
    "LoRAChoice",
    "References",
    "SampleRequest",
    "SampleResult",
    "Sampler",
    "TextContext",
    "VideoSpec",
    "fused_transformer",
    "inject_lora_file",
    "lora_strength",
    "sigma_schedule",
    "write_sample",
]
