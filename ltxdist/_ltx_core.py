"""Single place that imports ltx-core in a safe order.

`import ltx_core.quantization` as the first ltx_core import fails with a circular import, so the model,
LoRA, strategy and training modules import ltx-core names from here (loader first, then the transformer).
Modules that import ltx_core directly (encoders, sampling's conditioning / denoise / guidance / schedule,
parallel.activation_memory, some kernels) touch no quantization path, or run after this module did.
"""

import ltx_core.loader  # noqa: F401  (must come first: breaks the quantization import cycle)
from ltx_core.components.patchifiers import AudioPatchifier, VideoLatentPatchifier, get_pixel_coords
from ltx_core.guidance.perturbations import BatchedPerturbationConfig
from ltx_core.loader import LTXV_LORA_COMFY_RENAMING_MAP, SingleGPUModelBuilder
from ltx_core.loader.sd_ops import SDOps
from ltx_core.model.transformer import (
    LTXV_MODEL_COMFY_RENAMING_MAP,
    LTXModel,
    LTXModelConfigurator,
    Modality,
)
from ltx_core.types import AudioLatentShape, SpatioTemporalScaleFactors, VideoLatentShape

__all__ = [
    "LTXV_LORA_COMFY_RENAMING_MAP",
    "LTXV_MODEL_COMFY_RENAMING_MAP",
    "AudioLatentShape",
    "AudioPatchifier",
    "BatchedPerturbationConfig",
    "LTXModel",
    "LTXModelConfigurator",
    "Modality",
    "SDOps",
    "SingleGPUModelBuilder",
    "SpatioTemporalScaleFactors",
    "VideoLatentPatchifier",
    "VideoLatentShape",
    "get_pixel_coords",
]
