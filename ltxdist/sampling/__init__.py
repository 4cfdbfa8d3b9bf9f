"""Sampling: LTX-2.3 video + audio generation with LoRAs (CLI, training validation, evaluation grids).

Modules: `schedule` (sigma schedule), `guidance` (CFG + STG through ltx-core's guider),
`conditioning` (initial states, IC / ID references), `denoise` (Euler loop), `loading` (base + LoRAs),
`pipeline` (`Sampler`: text -> latents -> mp4), `sheet` + `grid` (evaluation protocol), `cli`.
"""

from ltxdist._lazy import lazy_exports

# Names load on first use (ltxdist/_lazy.py): `ltxdist-sample --help` imports no torch.
_EXPORTS = {
    "ConditioningLatents": "ltxdist.sampling.conditioning",
    "IdReferenceOptions": "ltxdist.sampling.conditioning",
    "VideoSpec": "ltxdist.sampling.conditioning",
    "Guidance": "ltxdist.sampling.guidance",
    "GuidanceParams": "ltxdist.sampling.guidance",
    "TextContext": "ltxdist.sampling.guidance",
    "LoRAChoice": "ltxdist.sampling.loading",
    "fused_transformer": "ltxdist.sampling.loading",
    "inject_lora_file": "ltxdist.sampling.loading",
    "lora_strength": "ltxdist.sampling.loading",
    "References": "ltxdist.sampling.pipeline",
    "Sampler": "ltxdist.sampling.pipeline",
    "SampleRequest": "ltxdist.sampling.pipeline",
    "SampleResult": "ltxdist.sampling.pipeline",
    "write_sample": "ltxdist.sampling.pipeline",
    "sigma_schedule": "ltxdist.sampling.schedule",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
