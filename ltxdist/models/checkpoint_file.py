"""Reading the metadata of an LTX checkpoint file (config + model_version) with clear errors."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import safe_open

from ltxdist.models.presets import assumed_layout_problems

TRANSFORMER_PREFIX = "model.diffusion_model."
# The official checkpoint also stores the text-encoder connectors under model.diffusion_model.; they
# belong to the text encoder (ltx-core's Gemma configurator loads them), not to the transformer.
TEXT_CONNECTOR_PREFIXES = (
    "video_embeddings_connector.",
    "audio_embeddings_connector.",
    "embeddings_connector.",
)


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or not in the LTX layout."""


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    config: dict[str, Any]
    model_version: str
    metadata: dict[str, str]


def read_checkpoint_info(path: str | Path) -> CheckpointInfo:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint not found: {path} (set model.checkpoint=... or write a tiny one with "
            f"`ltxdist-tiny-checkpoint {path.parent}`)"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as exc:  # safetensors raises several types for a corrupt header
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc
    if "config" not in metadata:
        raise CheckpointError(
            f"{path} has no 'config' entry in its safetensors metadata; an LTX-2.3 checkpoint carries its "
            "config there (is this an LTX checkpoint, or a LoRA file?)"
        )
    try:
        config = json.loads(metadata["config"])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: metadata 'config' is not valid JSON: {exc}") from exc
    if "transformer" not in config:
        raise CheckpointError(f"{path}: metadata config has no 'transformer' section")
    problems = assumed_layout_problems(config)
    if problems:
        raise CheckpointError(f"{path}: metadata config disagrees with ltx-core: {'; '.join(problems)}")
    return CheckpointInfo(
        path=path, config=config, model_version=metadata.get("model_version", "unknown"), metadata=metadata
    )


def is_transformer_key(name: str) -> bool:
    """`name` without the checkpoint prefix: a transformer weight (not a text connector)?"""
    return not name.startswith(TEXT_CONNECTOR_PREFIXES)


def transformer_keys_in_file(path: str | Path) -> list[str]:
    """Transformer parameter names stored in the file, with the checkpoint prefix stripped."""
    with safe_open(str(path), framework="pt") as f:
        names = [k[len(TRANSFORMER_PREFIX) :] for k in f.keys() if k.startswith(TRANSFORMER_PREFIX)]  # noqa: SIM118 (safe_open is not iterable)
    return [n for n in names if is_transformer_key(n)]


def major_minor(version: str) -> tuple[str, ...]:
    """'2.3.0' -> ('2', '3'); used to decide whether a LoRA fits a base model."""
    parts = version.strip().lstrip("v").split(".")
    return tuple(parts[:2])
