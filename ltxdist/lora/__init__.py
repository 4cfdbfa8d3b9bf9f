"""LoRA injection, the ComfyUI / ltx-core file format, merging. Names load on first use (ltxdist/_lazy.py)."""

from ltxdist._lazy import lazy_exports

_EXPORTS = {
    "LoRAFileError": "ltxdist.lora.comfy_format",
    "check_base_version": "ltxdist.lora.comfy_format",
    "export_lora": "ltxdist.lora.comfy_format",
    "import_lora": "ltxdist.lora.comfy_format",
    "read_lora_file": "ltxdist.lora.comfy_format",
    "read_lora_header": "ltxdist.lora.comfy_format",
    "LoRASpec": "ltxdist.lora.inject",
    "inject_lora": "ltxdist.lora.inject",
    "lora_modules": "ltxdist.lora.inject",
    "lora_parameters": "ltxdist.lora.inject",
    "merge_lora": "ltxdist.lora.inject",
    "LoRALinear": "ltxdist.lora.layers",
    "TARGET_SETS": "ltxdist.lora.targets",
    "resolve_target_modules": "ltxdist.lora.targets",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
