"""The transformer for sampling: base checkpoint + any number of LoRAs with strengths.

Two ways to apply a LoRA, both checked against the base model version first:

- `fused_transformer`: ltx-core's `SingleGPUModelBuilder(...).lora(path, strength, ...)` folds
  `W += strength * B @ A` into the weights, exactly as ltx-pipelines loads LoRAs (any number of them);
- `inject_lora_file` + `lora_strength`: ltxdist's adapters stay separate, so one loaded base serves
  every strength of an evaluation grid (and training validation samples with the live adapters).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ltxdist._ltx_core import (
    LTXV_LORA_COMFY_RENAMING_MAP,
    LTXV_MODEL_COMFY_RENAMING_MAP,
    LTXModelConfigurator,
    SingleGPUModelBuilder,
)
from ltxdist.lora import LoRAFileError, LoRASpec, check_base_version, import_lora, inject_lora, read_lora_file
from ltxdist.lora.comfy_format import LoRAFile
from ltxdist.lora.inject import lora_modules
from ltxdist.models import build_meta_transformer, read_checkpoint_info
from ltxdist.models.checkpoint_file import CheckpointInfo
from ltxdist.models.loader import check_transformer_keys


@dataclass(frozen=True)
class LoRAChoice:
    path: Path
    strength: float = 1.0

    @classmethod
    def parse(cls, text: str) -> LoRAChoice:
        """`PATH` or `PATH:STRENGTH` (the --lora flag)."""
        path, sep, tail = text.rpartition(":")
        if sep:
            try:
                return cls(Path(path), float(tail))
            except ValueError:
                pass
        return cls(Path(text))


def read_checked_loras(
    loras: list[LoRAChoice], base_model_version: str, *, force: bool = False
) -> list[LoRAFile]:
    files = []
    for choice in loras:
        lora = read_lora_file(choice.path)
        check_base_version(lora, base_model_version, force=force)
        files.append(lora)
    return files


def _check_modules_exist(model: torch.nn.Module, loras: list[LoRAFile]) -> None:
    # ltx-core's fusion silently skips adapter keys that match no weight: fail loudly instead.
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    for lora in loras:
        unknown = [m for m in lora.modules if m not in linears]
        if unknown:
            raise LoRAFileError(
                f"{lora.path}: {len(unknown)} adapters name no Linear of this base model, e.g. {unknown[:3]} "
                "(a LoRA for another architecture?)"
            )


def fused_transformer(
    checkpoint: str | Path,
    loras: list[LoRAChoice],
    *,
    device: torch.device,
    dtype: torch.dtype,
    force: bool = False,
) -> tuple[torch.nn.Module, CheckpointInfo, list[LoRAFile]]:
    """Base + LoRAs fused by ltx-core's loader; returns (model in eval mode, base info, LoRA files)."""
    info = read_checkpoint_info(checkpoint)
    files = read_checked_loras(loras, info.model_version, force=force)
    meta = build_meta_transformer(info.config)
    check_transformer_keys(meta, info.path)  # ltx-core loads with strict=False
    _check_modules_exist(meta, files)
    builder = SingleGPUModelBuilder(
        model_class_configurator=LTXModelConfigurator,
        model_path=str(info.path),
        model_sd_ops=LTXV_MODEL_COMFY_RENAMING_MAP,
    )
    for choice in loras:
        builder = builder.lora(str(choice.path), choice.strength, LTXV_LORA_COMFY_RENAMING_MAP)
    try:
        model = builder.build(device=device, dtype=dtype)
    except ValueError as exc:
        if "Unsupported dtype" in str(exc):
            raise ValueError(
                f"{info.path}: ltx-core fuses LoRAs only into bf16 / fp8 base weights ({exc}); convert the "
                "base checkpoint to bf16"
            ) from exc
        raise
    # With ltx-core's default (no-cache) registry, weights no LoRA touches keep the file's dtype: cast all.
    return model.to(dtype).eval(), info, files


def inject_lora_file(
    model: torch.nn.Module, lora: LoRAFile, *, base_model_version: str, force: bool = False
) -> None:
    """Add adapters shaped like `lora`'s to a loaded base model and load them (strength 1).

    alpha = rank, so the adapter's scale is 1 and the file's B (alpha/rank baked in) is loaded as is.
    """
    ranks = {int(lora.tensors[m + ".lora_A.weight"].shape[0]) for m in lora.modules}
    if len(ranks) != 1:
        raise LoRAFileError(f"{lora.path}: mixed ranks {sorted(ranks)}; use the fused path (ltxdist-sample)")
    rank = ranks.pop()
    _check_modules_exist(model, [lora])
    inner = sorted({m.split(".", 2)[2] for m in lora.modules})
    blocks = sorted({int(m.split(".")[1]) for m in lora.modules})
    dtype = next(model.parameters()).dtype
    # Patterns x blocks may cover a few modules the file lacks: their B stays zero (no effect).
    inject_lora(
        model, LoRASpec(rank=rank, alpha=float(rank), targets=tuple(inner), blocks=tuple(blocks), dtype=dtype)
    )
    import_lora(model, lora, base_model_version=base_model_version, force=force)


def load_lora_weights(
    model: torch.nn.Module, lora: LoRAFile, *, base_model_version: str, force: bool = False
) -> bool:
    """Load `lora` into already injected adapters; False when the layout differs (re-inject needed)."""
    modules = lora_modules(model)
    if set(lora.modules) - set(modules):
        return False
    for name in lora.modules:
        if lora.tensors[name + ".lora_A.weight"].shape != modules[name].lora_A.shape:
            return False
    with torch.no_grad():
        for module in modules.values():
            module.lora_B.zero_()  # adapters the new file lacks must not keep the old file's weights
    import_lora(model, lora, base_model_version=base_model_version, force=force)
    return True


@contextlib.contextmanager
def lora_strength(model: torch.nn.Module, strength: float) -> Iterator[None]:
    """Scale every adapter's output by `strength` (0 = the base model exactly), restored on exit."""
    modules = list(lora_modules(model).values())
    saved = [m.scaling for m in modules]
    try:
        for m, s in zip(modules, saved, strict=True):
            m.scaling = s * strength
        yield
    finally:
        for m, s in zip(modules, saved, strict=True):
            m.scaling = s
