"""Build the LTX-2.3 transformer from a checkpoint: one path for the tiny model and the 22B one.

Steps: read config + model_version from the safetensors metadata, build on the meta device with
ltx-core's own configurator, check the transformer keys against the file (ltx-core's loader uses
`strict=False` and would silently ignore a mismatch), then load the weights with ltx-core's loader.
Building and loading are separate functions so parallel wrappers can shard between them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open

from ltxdist._ltx_core import (
    LTXV_MODEL_COMFY_RENAMING_MAP,
    LTXModel,
    LTXModelConfigurator,
    SingleGPUModelBuilder,
)
from ltxdist.models.checkpoint_file import (
    CheckpointError,
    CheckpointInfo,
    is_transformer_key,
    read_checkpoint_info,
    transformer_keys_in_file,
)

if TYPE_CHECKING:
    from ltxdist.parallel.shard_rows import LocalSlice

_MAX_LISTED_KEYS = 20
_SD_OPS = LTXV_MODEL_COMFY_RENAMING_MAP


@dataclass
class LoadedTransformer:
    model: LTXModel
    config: dict[str, Any]
    model_version: str
    checkpoint: Path


def _ltx_builder(path: Path) -> SingleGPUModelBuilder:
    return SingleGPUModelBuilder(
        model_class_configurator=LTXModelConfigurator,
        model_path=str(path),
        model_sd_ops=LTXV_MODEL_COMFY_RENAMING_MAP,
    )


def build_meta_transformer(config: dict[str, Any]) -> LTXModel:
    """The transformer on the meta device (no memory), exactly as ltx-core builds it."""
    with torch.device("meta"):
        model = LTXModelConfigurator.from_config(config)
    return model


class MetaBase:
    """The base checkpoint's header (read_checkpoint_info) and its transformer on the meta device, each
    read or built at most once per process. The training start-up shares them: rank 0's checks before
    any model exists (training/train.py: the data fits the base, lora.targets match, the run identity)
    and configure_model, which would otherwise read the header again and build the meta model a second
    time (0.3 s at 22B). Read on first use: model.create_if_missing may write the checkpoint first.
    Not an nn.Module, so a LightningModule holding it does not adopt the meta model as a submodule."""

    def __init__(self, checkpoint: str | Path):
        self.checkpoint = Path(checkpoint)
        self._info: CheckpointInfo | None = None
        self._model: LTXModel | None = None

    @property
    def info(self) -> CheckpointInfo:
        if self._info is None:
            self._info = read_checkpoint_info(self.checkpoint)
        return self._info

    def model(self) -> LTXModel:
        """The meta transformer, to look at: whoever changes it takes it (take_model)."""
        if self._model is None:
            self._model = build_meta_transformer(self.info.config)
        return self._model

    def take_model(self) -> LTXModel:
        """The meta transformer for the caller to change (LoRA injection, sharding, materialising): the one
        already built for a check if any, else a new one; either way no longer held here, so no second
        caller gets a model someone else has changed."""
        model = self.model()
        self._model = None
        return model


def _format_keys(keys: list[str]) -> str:
    shown = ", ".join(sorted(keys)[:_MAX_LISTED_KEYS])
    more = len(keys) - _MAX_LISTED_KEYS
    return shown + (f", ... ({more} more)" if more > 0 else "")


def check_transformer_keys(model: torch.nn.Module, path: Path) -> None:
    """Fail loudly on missing or unexpected transformer keys, listing them."""
    from ltxdist.quant.checkpoint import is_quantization_sibling

    # Scales beside 8-bit weights (the FP8 checkpoint's, or a quantized model's) are not ltx-core keys.
    expected = {k for k in model.state_dict() if not is_quantization_sibling(k)}
    found = {k for k in transformer_keys_in_file(path) if not is_quantization_sibling(k)}
    missing = sorted(expected - found)
    unexpected = sorted(found - expected)
    if missing or unexpected:
        parts = [f"{path} does not match the transformer its own config describes:"]
        if missing:
            parts.append(f"  missing {len(missing)} keys: {_format_keys(missing)}")
        if unexpected:
            parts.append(f"  unexpected {len(unexpected)} keys: {_format_keys(unexpected)}")
        parts.append("  (truncated download, or a checkpoint for another model version?)")
        raise CheckpointError("\n".join(parts))


def load_transformer_weights(
    model: LTXModel, path: Path, device: torch.device, dtype: torch.dtype | None
) -> LTXModel:
    """Materialise `model` (meta or real) with the file's weights, through ltx-core's loader."""
    state = _ltx_builder(path).load_sd(
        [str(path)], registry=_NoCache(), device=device, sd_ops=LTXV_MODEL_COMFY_RENAMING_MAP
    )
    sd = {k: v if dtype is None else v.to(dtype) for k, v in state.sd.items() if is_transformer_key(k)}
    model.load_state_dict(sd, strict=True, assign=True)
    return model


class _NoCache:
    """A registry that keeps nothing (ltx-core's DummyRegistry, without importing its internals)."""

    def get(self, paths: list[str], sd_ops: Any) -> None:
        return None

    def add(self, paths: list[str], sd_ops: Any, state_dict: Any) -> None:
        return None


class BaseWeightReader:
    """Reads single transformer tensors, or one rank's rows of them, from the checkpoint file.

    ltx-core's loader reads the whole file into memory (44 GB for the 22B model); doing that on every
    rank is how the reference trainer ran out of CPU memory. This reader memory-maps the file and reads
    tensor by tensor (and, for a sharded parameter, only this rank's rows), using ltx-core's own key
    renaming so names match exactly what `load_transformer_weights` would produce.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file = safe_open(str(self.path), framework="pt")
        if any(hasattr(op, "kv_operation") for op in _SD_OPS.mapping):
            # A value transform cannot be applied to a row slice; ltx-core's LTX-2.3 map has none.
            raise CheckpointError(f"{_SD_OPS.name} transforms values; sliced loading is not possible")
        self._file_key: dict[str, str] = {}
        for key in self._file.keys():  # noqa: SIM118 (safe_open is not iterable)
            name = _SD_OPS.apply_to_key(key)
            if name is not None and is_transformer_key(name):
                self._file_key[name] = key

    def names(self) -> set[str]:
        return set(self._file_key)

    def read(self, name: str, part: LocalSlice | None = None) -> torch.Tensor:
        """The whole tensor, or only [part.start, part.stop) along part.dim."""
        key = self._file_key[name]
        if part is None:
            return self._file.get_tensor(key)
        view = self._file.get_slice(key)
        index = [slice(None)] * len(view.get_shape())
        index[part.dim] = slice(part.start, part.stop)
        return view[tuple(index)]


@torch.no_grad()
def copy_base_weights(
    model: torch.nn.Module,
    path: Path,
    dtype: torch.dtype | None,
    *,
    select: Callable[[str], bool] | None = None,
    on_read: Callable[[torch.Tensor], None] | None = None,
    work_device: torch.device | None = None,
) -> None:
    """Copy the file's transformer weights into an already materialised model (e.g. after `to_empty`).

    Reads one tensor at a time, and for a parameter sharded by FSDP2 only this rank's rows, so peak
    extra memory is one tensor, never the file. Parameters the file does not have must be LoRA
    adapters; anything else missing is an error. `select(name)` restricts the copy to some weights
    (materialising block by block). `on_read(tensor)` sees every tensor read from the file (a
    diagnostic hook: ltxdist.parallel.materialize_report).

    8-bit weights (ltxdist.quant): a target stored in fp8 / int8 gets the weight quantized as it is read
    (with its `weight_scale`), and a pre-quantized file (the official FP8 checkpoint) is dequantized or
    kept as it is, per target (quant/checkpoint.py); quantizing runs on `work_device` (default: the
    target's device; host-resident offloaded blocks are quantized on the GPU, then copied back).
    """
    from ltxdist.parallel.shard_rows import local_slice, local_tensor  # here: parallel imports this module
    from ltxdist.quant.checkpoint import BaseWeightCodec, is_quantization_sibling

    keep = select or (lambda name: True)
    codec = BaseWeightCodec(BaseWeightReader(path))
    available = {n for n in codec.weight_names if keep(n)}
    all_targets = model.state_dict(keep_vars=True)
    # A weight_scale buffer is filled together with its weight.
    targets = {n: t for n, t in all_targets.items() if keep(n) and not is_quantization_sibling(n)}
    missing = [n for n in targets if n not in available and not n.endswith((".lora_A", ".lora_B"))]
    if missing:
        raise CheckpointError(f"{path} lacks {len(missing)} transformer weights: {_format_keys(missing)}")
    unexpected = sorted(available - set(targets))
    if unexpected:
        raise CheckpointError(f"{path} has {len(unexpected)} unexpected weights: {_format_keys(unexpected)}")
    for name in sorted(available):
        target = targets[name]
        scale = all_targets.get(name + "_scale")
        codec.copy_into(
            name,
            local_tensor(target),
            part=local_slice(target),
            scale_target=None if scale is None else local_tensor(scale),
            via_dtype=dtype,
            work_device=work_device,
            on_read=on_read,
        )


def load_transformer(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = torch.bfloat16
) -> LoadedTransformer:
    info: CheckpointInfo = read_checkpoint_info(path)
    model = build_meta_transformer(info.config)
    check_transformer_keys(model, info.path)
    from ltxdist.quant.checkpoint import has_weight_scales

    if has_weight_scales(info.path):
        # A pre-quantized (FP8) file: ltx-core's loader would cast the 8-bit data without its scale.
        model = model.to(dtype or torch.bfloat16).to_empty(device=torch.device(device))
        copy_base_weights(model, info.path, dtype)
    else:
        load_transformer_weights(model, info.path, torch.device(device), dtype)
    return LoadedTransformer(
        model=model, config=info.config, model_version=info.model_version, checkpoint=info.path
    )
