"""Build one checkpoint component on the meta device and load it strictly.

ltx-core's `SingleGPUModelBuilder.build` loads with `strict=False`, so a checkpoint without VAE
weights would silently give a VAE of `torch.empty` garbage. Here the same builder pieces are used
(configurator -> meta model, ltx-core's state-dict loader with the component's key filter), then the
keys are compared and the weights loaded with `strict=True`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ltxdist._ltx_core import SingleGPUModelBuilder
from ltxdist.encoders.components import Component
from ltxdist.models.checkpoint_file import CheckpointError, read_checkpoint_info

_SHOWN = 12


class _NoCache:
    def get(self, paths: list[str], sd_ops: object) -> None:
        return None

    def add(self, paths: list[str], sd_ops: object, state_dict: object) -> None:
        return None


def _shown(keys: set[str]) -> str:
    listed = sorted(keys)
    more = len(listed) - _SHOWN
    return ", ".join(listed[:_SHOWN]) + (f", ... ({more} more)" if more > 0 else "")


def build_component(
    checkpoint: str | Path,
    component: Component,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> torch.nn.Module:
    """`component` built from `checkpoint`'s config and weights, in eval mode on `device`."""
    info = read_checkpoint_info(checkpoint)
    if component.config_section not in info.config:
        raise CheckpointError(
            f"{info.path} has no '{component.config_section}' section in its config metadata, so it cannot "
            f"provide the {component.name}. Point --checkpoint at the full LTX-2.3 checkpoint (the official "
            "ltx-2.3-22b-dev.safetensors, or `ltxdist-tiny-checkpoint OUT` for the tiny one)."
        )
    builder = SingleGPUModelBuilder(
        model_class_configurator=component.configurator,
        model_path=str(info.path),
        model_sd_ops=component.sd_ops,
    )
    model = builder.meta_model(info.config, ())
    state = builder.load_sd(
        [str(info.path)], registry=_NoCache(), device=torch.device(device), sd_ops=component.sd_ops
    ).sd
    expected = set(model.state_dict().keys())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        lines = [f"{info.path}: the {component.name} weights do not match the model its config describes"]
        if missing:
            lines.append(f"  missing {len(missing)}: {_shown(missing)}")
        if unexpected:
            lines.append(f"  unexpected {len(unexpected)}: {_shown(unexpected)}")
        raise CheckpointError("\n".join(lines))
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    still_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if still_meta:
        raise CheckpointError(f"{component.name}: tensors left on the meta device: {_shown(set(still_meta))}")
    return model.to(device=device, dtype=dtype).eval() if dtype is not None else model.to(device).eval()
