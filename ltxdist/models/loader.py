"""Build the LTX-2.3 transformer from a checkpoint: one path for the tiny model and the 22B one.

Steps: read config + model_version from the safetensors metadata, build on the meta device with
ltx-core's own configurator, check the transformer keys against the file (ltx-core's loader uses
`strict=False` and would silently ignore a mismatch), then load the weights with ltx-core's loader.
Building and loading are separate functions so parallel wrappers can shard between them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

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

_MAX_LISTED_KEYS = 20


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


def _format_keys(keys: list[str]) -> str:
    shown = ", ".join(sorted(keys)[:_MAX_LISTED_KEYS])
    more = len(keys) - _MAX_LISTED_KEYS
    return shown + (f", ... ({more} more)" if more > 0 else "")


def check_transformer_keys(model: torch.nn.Module, path: Path) -> None:
    """Fail loudly on missing or unexpected transformer keys, listing them."""
    expected = set(model.state_dict().keys())
    found = set(transformer_keys_in_file(path))
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


@torch.no_grad()
def copy_base_weights(model: torch.nn.Module, path: Path, dtype: torch.dtype | None) -> None:
    """Copy the file's transformer weights into an already materialised model (e.g. after `to_empty`).

    Parameters the file does not have must be LoRA adapters; anything else missing is an error.
    """
    device = next(model.parameters()).device
    state = _ltx_builder(path).load_sd(
        [str(path)], registry=_NoCache(), device=torch.device("cpu"), sd_ops=LTXV_MODEL_COMFY_RENAMING_MAP
    )
    params = dict(model.named_parameters())
    missing = [n for n in params if n not in state.sd and not n.endswith((".lora_A", ".lora_B"))]
    if missing:
        raise CheckpointError(f"{path} lacks {len(missing)} transformer weights: {_format_keys(missing)}")
    for name, tensor in state.sd.items():
        if not is_transformer_key(name):
            continue
        target = params[name]
        target.copy_(tensor.to(device=device, dtype=dtype or target.dtype))


def load_transformer(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = torch.bfloat16
) -> LoadedTransformer:
    info: CheckpointInfo = read_checkpoint_info(path)
    model = build_meta_transformer(info.config)
    check_transformer_keys(model, info.path)
    load_transformer_weights(model, info.path, torch.device(device), dtype)
    return LoadedTransformer(
        model=model, config=info.config, model_version=info.model_version, checkpoint=info.path
    )
