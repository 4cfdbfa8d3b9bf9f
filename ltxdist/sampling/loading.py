"""The transformer for sampling: base checkpoint + any number of LoRAs with strengths.

Two ways to apply a LoRA, both checked against the base model version first:

- `fused_transformer`: ltx-core's `SingleGPUModelBuilder(...).lora(path, strength, ...)` folds
  `W += strength * B @ A` into the weights, exactly as ltx-pipelines loads LoRAs (any number of them);
- `inject_lora_file` + `lora_strength`: ltxdist's adapters stay separate, so one loaded base serves
  every strength of an evaluation grid (and training validation samples with the live adapters).
"""

from __future__ import annotations

import contextlib
import re
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
from ltxdist.lora.comfy_format import A_SUFFIX, LoRAFile, LoRAHeader, check_lora_fits, read_lora_header
from ltxdist.lora.inject import lora_modules
from ltxdist.lora.merge_file import merge_lora_into_state_dict
from ltxdist.lora.targets import resolve_target_modules
from ltxdist.models import build_meta_transformer, load_transformer, read_checkpoint_info
from ltxdist.models.checkpoint_file import CheckpointInfo
from ltxdist.models.loader import check_transformer_keys
from ltxdist.quant.checkpoint import has_weight_scales

# transformer_blocks.{i}.{module}: what per-block injection (targets x blocks) can reproduce.
_BLOCK_MODULE = re.compile(r"transformer_blocks\.\d+\..+")


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


def read_checked_headers(
    paths: list[Path], base_model_version: str, *, force: bool = False
) -> list[LoRAHeader]:
    """`read_checked_loras`' checks from the headers alone: a tool that loads one file at a time checks
    them all first without reading every tensor twice (a rank-128 file is ~1 GB)."""
    headers = []
    for path in paths:
        header = read_lora_header(path)
        check_base_version(header, base_model_version, force=force)
        headers.append(header)
    return headers


def _check_modules_exist(model: torch.nn.Module, loras: list[LoRAFile] | list[LoRAHeader]) -> None:
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    for lora in loras:
        check_lora_fits(lora, linears)


def _fold_loras(model: torch.nn.Module, files: list[LoRAFile], loras: list[LoRAChoice], path: Path) -> None:
    """W += strength * B @ A in the loaded model's own weights, with the merge's arithmetic."""
    weights = {name: param for name, param in model.named_parameters() if name.endswith(".weight")}
    folded = dict(weights)
    for lora, choice in zip(files, loras, strict=True):
        merge_lora_into_state_dict(folded, lora, choice.strength, base=path)
    with torch.no_grad():
        for name, value in folded.items():
            if value is not weights[name]:
                weights[name].copy_(value)


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
    if has_weight_scales(info.path):
        # The official FP8 layout: ltx-core's builder would cast the fp8 data without its scale (and its
        # scaled-fp8 fusion expects weights it transposed itself). ltxdist's loader reads data * scale;
        # the LoRAs are then folded in with the merge's arithmetic.
        model = load_transformer(info.path, device=device, dtype=dtype).model
        _fold_loras(model, files, loras, info.path)
        return model.eval(), info, files
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


@dataclass(frozen=True)
class InjectionLayout:
    """Live adapters that reproduce a LoRA file: one rank, module kinds x blocks (alpha = rank)."""

    rank: int
    targets: tuple[str, ...]  # module names inside a block (attn1.to_q, ...)
    blocks: tuple[int, ...]


def injection_layout(lora: LoRAFile | LoRAHeader) -> InjectionLayout:
    """The per-block injection for `lora`, or an error naming the file when per-block adapters cannot
    reproduce it (mixed ranks, adapters outside the transformer blocks)."""
    ranks = {int(lora.shapes[m + A_SUFFIX][0]) for m in lora.modules}
    if len(ranks) != 1:
        raise LoRAFileError(f"{lora.path}: mixed ranks {sorted(ranks)}; use the fused path (ltxdist-sample)")
    outside = [m for m in lora.modules if not _BLOCK_MODULE.fullmatch(m)]
    if outside:
        raise LoRAFileError(
            f"{lora.path}: adapters outside the transformer blocks ({outside[:3]}) cannot be injected "
            "per block; sample it with `ltxdist-sample generate`, which fuses any Linear"
        )
    return InjectionLayout(
        rank=ranks.pop(),
        targets=tuple(sorted({m.split(".", 2)[2] for m in lora.modules})),
        blocks=tuple(sorted({int(m.split(".")[1]) for m in lora.modules})),
    )


def check_loras_load_in_turn(
    model: torch.nn.Module, headers: list[LoRAHeader], *, base_model_version: str, force: bool = False
) -> None:
    """Everything that would stop `inject_lora_file` then `load_lora_weights` from taking these files one
    after another into the same adapters, found from the headers before any work (a grid samples the
    base model first: minutes at 22B). The adapters come from the first file, or are those `model`
    already has."""
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    live = lora_modules(model)
    rank = next(iter(live.values())).rank if live else None
    names = set(live)
    first: Path | None = None
    for header in headers:
        check_base_version(header, base_model_version, force=force)
        check_lora_fits(header, linears)
        layout = injection_layout(header)
        if rank is None:
            first, rank = header.path, layout.rank
            names = set(resolve_target_modules(model, list(layout.targets), list(layout.blocks)))
        elif layout.rank != rank or not set(header.modules) <= names:
            against = f"{first}'s" if first is not None else "the loaded adapters'"
            raise LoRAFileError(
                f"{header.path}: its adapters differ in modules or rank from {against}; "
                "run the grid separately for it"
            )


def inject_lora_file(
    model: torch.nn.Module, lora: LoRAFile, *, base_model_version: str, force: bool = False
) -> None:
    """Add adapters shaped like `lora`'s to a loaded base model and load them (strength 1).

    alpha = rank, so the adapter's scale is 1 and the file's B (alpha/rank baked in) is loaded as is.
    """
    _check_modules_exist(model, [lora])
    layout = injection_layout(lora)
    dtype = next(model.parameters()).dtype
    # Patterns x blocks may cover a few modules the file lacks: their B stays zero (no effect).
    inject_lora(
        model,
        LoRASpec(
            rank=layout.rank,
            alpha=float(layout.rank),
            targets=layout.targets,
            blocks=layout.blocks,
            dtype=dtype,
        ),
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
        if lora.tensors[name + A_SUFFIX].shape != modules[name].lora_A.shape:
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
