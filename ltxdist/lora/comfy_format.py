"""LoRA files in the ComfyUI / ltx-core format.

Keys `diffusion_model.transformer_blocks.{i}.{module}.lora_A.weight` (r, in) and `.lora_B.weight`
(out, r), bf16. ltx-core and ComfyUI fuse `W += strength * B @ A` and ignore alpha, so `alpha / rank`
is baked into B on export and divided out again on import.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

import ltxdist
from ltxdist.io import SafetensorsWriter, atomic_file
from ltxdist.lora.inject import lora_modules
from ltxdist.models.checkpoint_file import major_minor

COMFY_PREFIX = "diffusion_model."
A_SUFFIX = ".lora_A.weight"
B_SUFFIX = ".lora_B.weight"


class LoRAFileError(ValueError):
    """A LoRA file is unreadable, malformed, or does not fit the base model."""


@dataclass(frozen=True)
class LoRAFile:
    path: Path
    tensors: dict[str, torch.Tensor]  # module name (no prefix) -> (A, B) flattened as name+suffix
    metadata: dict[str, str]

    @property
    def modules(self) -> list[str]:
        return sorted(k[: -len(A_SUFFIX)] for k in self.tensors if k.endswith(A_SUFFIX))

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """As `LoRAHeader.shapes`: checks that need only shapes take either."""
        return {k: tuple(v.shape) for k, v in self.tensors.items()}


def export_lora(
    model: torch.nn.Module,
    path: str | Path,
    *,
    base_model_version: str,
    training_strategy: str,
    step: int,
    target_modules: list[str],
    extra_metadata: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.bfloat16,
    full_tensor: Callable[[torch.Tensor], torch.Tensor | None] | None = None,
) -> Path:
    """Write the adapters of `model` as a ComfyUI-format LoRA file, one adapter matrix at a time.

    `full_tensor(param)` returns the whole parameter on the process that writes and None elsewhere
    (`ltxdist.parallel.gather.gather_to_rank0` for sharded models: a collective, so every rank calls
    export_lora and only rank 0 writes). By default the parameter itself. The file is streamed: no
    process holds all adapters a second time, and the file is never built in memory."""
    modules = lora_modules(model)
    if not modules:
        raise LoRAFileError("the model carries no LoRA adapters to export")
    fetch = full_tensor or (lambda p: p.detach())
    ranks = {m.rank for m in modules.values()}
    alphas = {m.alpha for m in modules.values()}
    metadata = {
        "ltxdist_version": ltxdist.__version__,
        "base_model_version": base_model_version,
        "rank": str(max(ranks)) if len(ranks) == 1 else json.dumps(sorted(ranks)),
        "alpha": str(alphas.pop()) if len(alphas) == 1 else json.dumps(sorted(alphas)),
        "target_modules": json.dumps(target_modules),
        "training_strategy": training_strategy,
        "step": str(step),
        "format": "comfyui-ltx",
    }
    for key, value in (extra_metadata or {}).items():
        metadata[key] = value if isinstance(value, str) else json.dumps(value)
    # What each file key holds: (module, A or B) with its full shape, known without gathering.
    sources: dict[str, tuple[Any, str]] = {}
    layout: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
    for name, m in modules.items():
        sources[COMFY_PREFIX + name + A_SUFFIX] = (m, "A")
        layout[COMFY_PREFIX + name + A_SUFFIX] = (dtype, (m.rank, m.in_features))
        sources[COMFY_PREFIX + name + B_SUFFIX] = (m, "B")
        layout[COMFY_PREFIX + name + B_SUFFIX] = (dtype, (m.out_features, m.rank))
    path = Path(path)
    with contextlib.ExitStack() as stack:
        writer: SafetensorsWriter | None = None
        failed: OSError | None = None
        # One dtype, so the file order is this order; every rank gathers in it.
        for key in layout:
            m, which = sources[key]
            value = fetch(m.lora_A if which == "A" else m.lora_B)
            if value is None or failed is not None:
                continue  # another process writes; or this write failed, but the gathers must go on
            try:
                if writer is None:
                    tmp = stack.enter_context(atomic_file(path))
                    writer = SafetensorsWriter(stack.enter_context(open(tmp, "wb")), layout, metadata)
                scaled = value.float() * m.scaling if which == "B" else value.float()
                writer.write(key, scaled.to(dtype))  # alpha / rank baked into B (ltx-core ignores alpha)
            except OSError as exc:
                failed = exc
            del value
        if failed is not None:
            raise failed  # through atomic_file: the temporary goes, the error names the file
        if writer is not None:
            writer.finish()
    return path


@dataclass(frozen=True)
class LoRAHeader:
    """What a LoRA file's safetensors header says (names, shapes, metadata), checked as `read_lora_file`
    checks it, without reading a tensor: checks that need no values (a rank-128 file is ~1 GB)."""

    path: Path
    shapes: dict[str, tuple[int, ...]]  # module name (no prefix) + A/B suffix -> shape
    metadata: dict[str, str]

    @property
    def modules(self) -> list[str]:
        return sorted(k[: -len(A_SUFFIX)] for k in self.shapes if k.endswith(A_SUFFIX))


def _check_path(path: Path) -> None:
    if not path.is_file():
        raise LoRAFileError(f"LoRA file not found: {path}")
    if path.suffix != ".safetensors":
        raise LoRAFileError(f"{path}: only .safetensors LoRA files are accepted (no pickle-based formats)")


def read_lora_header(path: str | Path) -> LoRAHeader:
    """The file's layout and metadata, refused with `read_lora_file`'s errors; no tensor is read."""
    path = Path(path)
    _check_path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            raw = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except Exception as exc:
        raise LoRAFileError(f"{path} is not a readable safetensors file: {exc}") from exc
    shapes: dict[str, tuple[int, ...]] = {}
    for key, shape in raw.items():
        if key.startswith("model." + COMFY_PREFIX):
            raise LoRAFileError(
                f"{path}: key {key!r} carries a 'model.diffusion_model.' prefix; ltx-core and ComfyUI "
                "would silently match nothing. Re-export with `ltxdist-export convert`."
            )
        if not key.startswith(COMFY_PREFIX) or not key.endswith((A_SUFFIX, B_SUFFIX)):
            raise LoRAFileError(
                f"{path}: unexpected key {key!r} (expected diffusion_model.*.lora_A/B.weight)"
            )
        shapes[key[len(COMFY_PREFIX) :]] = shape
    for key in shapes:
        twin = key.replace(A_SUFFIX, B_SUFFIX) if key.endswith(A_SUFFIX) else key.replace(B_SUFFIX, A_SUFFIX)
        if twin not in shapes:
            raise LoRAFileError(f"{path}: {key!r} has no matching {twin!r}")
    if not shapes:
        raise LoRAFileError(f"{path} holds no LoRA tensors")
    header = LoRAHeader(path=path, shapes=shapes, metadata=metadata)
    for name in header.modules:
        _check_adapter_pair(header, name)
    return header


def read_lora_file(path: str | Path) -> LoRAFile:
    """The checked file (`read_lora_header`'s checks) with its tensors."""
    header = read_lora_header(path)
    try:
        with safe_open(str(header.path), framework="pt") as f:
            tensors = {name: f.get_tensor(COMFY_PREFIX + name) for name in header.shapes}
    except Exception as exc:
        raise LoRAFileError(f"{header.path} is not a readable safetensors file: {exc}") from exc
    return LoRAFile(path=header.path, tensors=tensors, metadata=header.metadata)


def _check_adapter_pair(header: LoRAHeader, name: str) -> None:
    """A (r, in) and B (out, r) with one r: anything else fails later, deep inside a merge or a forward,
    without naming the file (for a 22B base, only after minutes of loading)."""
    a, b = header.shapes[name + A_SUFFIX], header.shapes[name + B_SUFFIX]
    if len(a) != 2 or len(b) != 2 or a[0] != b[1]:
        raise LoRAFileError(
            f"{header.path}: {name} has lora_A {a} and lora_B {b}; expected "
            "A (rank, in_features) and B (out_features, rank) with the same rank"
        )


def check_lora_fits(lora: LoRAFile | LoRAHeader, linears: dict[str, torch.nn.Module]) -> None:
    """Every adapter names a Linear of the base (`linears`: module name -> Linear, meta is fine) and its
    A / B match that Linear's in / out features. ltx-core's fusion silently skips adapter keys that match
    no weight, and a shape mismatch fails deep in a matmul without naming the file."""
    unknown = [m for m in lora.modules if m not in linears]
    if unknown:
        raise LoRAFileError(
            f"{lora.path}: {len(unknown)} adapters name no Linear of this base model, e.g. {unknown[:3]} "
            "(a LoRA for another architecture?)"
        )
    shapes = lora.shapes
    for name in lora.modules:
        a, b = shapes[name + A_SUFFIX], shapes[name + B_SUFFIX]
        linear = linears[name]
        expected = (linear.in_features, linear.out_features)
        if (a[1], b[0]) != expected:
            raise LoRAFileError(
                f"{lora.path}: {name} adapts {a[1]} -> {b[0]} features, the base Linear is "
                f"{expected[0]} -> {expected[1]} (a LoRA for another model size?)"
            )


def check_base_version(
    lora: LoRAFile | LoRAHeader, base_model_version: str, *, force: bool = False, override: str = "--force"
) -> None:
    """Refuse a LoRA trained on another major.minor base (e.g. LTX-2 19B on 2.3): it loads silently
    elsewhere and ruins the output because the latent space changed. `override` is the caller's flag
    that sets `force`, named in the error."""
    trained_on = lora.metadata.get("base_model_version")
    if trained_on is None:
        if not force:
            raise LoRAFileError(
                f"{lora.path} does not say which base model it was trained on (no base_model_version "
                f"metadata); pass {override} if you are sure it fits"
            )
        return
    if major_minor(trained_on) != major_minor(base_model_version) and not force:
        raise LoRAFileError(
            f"{lora.path} was trained on base model version {trained_on}, but the base is "
            f"{base_model_version}: major.minor differ, so the latent spaces do not match. "
            f"Pass {override} to load it anyway."
        )


@torch.no_grad()
def import_lora(
    model: torch.nn.Module, lora: LoRAFile, *, base_model_version: str, force: bool = False
) -> None:
    """Load a LoRA file into an injected model (undoing the baked alpha/rank scale)."""
    check_base_version(lora, base_model_version, force=force)
    modules = lora_modules(model)
    missing = [m for m in lora.modules if m not in modules]
    if missing:
        raise LoRAFileError(
            f"{lora.path}: adapters for modules the model was not injected with: {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''} (set lora.targets to cover them)"
        )
    for name in lora.modules:
        module = modules[name]
        a, b = lora.tensors[name + A_SUFFIX], lora.tensors[name + B_SUFFIX]
        if a.shape != module.lora_A.shape or b.shape != module.lora_B.shape:
            raise LoRAFileError(
                f"{lora.path}: {name} has A{tuple(a.shape)} B{tuple(b.shape)}, the model expects "
                f"A{tuple(module.lora_A.shape)} B{tuple(module.lora_B.shape)} (rank mismatch? set lora.rank)"
            )
        module.lora_A.copy_(a.to(module.lora_A.dtype))
        module.lora_B.copy_((b.float() / module.scaling).to(module.lora_B.dtype))
