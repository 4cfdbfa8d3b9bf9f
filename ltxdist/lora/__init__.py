from ltxdist.lora.comfy_format import (
    LoRAFileError,
    check_base_version,
    export_lora,
    import_lora,
    read_lora_file,
)
from ltxdist.lora.inject import LoRASpec, inject_lora, lora_modules, lora_parameters, merge_lora
from ltxdist.lora.layers import LoRALinear
from ltxdist.lora.targets import TARGET_SETS, resolve_target_modules

__all__ = [
    "TARGET_SETS",
    "LoRAFileError",
    "LoRALinear",
    "LoRASpec",
    "check_base_version",
    "export_lora",
    "import_lora",
    "inject_lora",
    "lora_modules",
    "lora_parameters",
    "merge_lora",
    "read_lora_file",
    "resolve_target_modules",
]
