"""The trainable state of a DeepSpeed ZeRO-2/3 run as checkpoint tensors (same keys as trainable.py).

DeepSpeed's own `engine.save_checkpoint` writes `torch.save` pickles. Only the LoRA adapters train, so
the whole trainable state is small: it is assembled through DeepSpeed's public fragment API
(`safe_get_full_fp32_param`, `safe_get_full_optimizer_state`: collective, one tensor at a time) into
whole tensors on every rank, which DCP writes once (spread over the ranks). Loading reads whole tensors
on every rank and scatters them back with `safe_set_full_*`. Cost: each rank holds the full adapter +
optimizer state in CPU memory while saving or loading (12 bytes per adapter parameter in fp32: about
10 GB for rank 128 on every attention of the 22B model). Gain: a ZeRO checkpoint resumes on any number
of processes and under any other layout, and any checkpoint resumes under ZeRO.
"""

from __future__ import annotations

from typing import Any

import torch

from ltxdist.checkpoint.trainable import (
    MODEL_PREFIX,
    OPTIM_PREFIX,
    full_shape,
    json_hyperparameters,
    trainable_parameters,
    with_types_of,
)


class DeepSpeedTrainable:
    def __init__(self, module: torch.nn.Module, ds_optimizer: Any):
        self.module, self.ds_optimizer = module, ds_optimizer
        self.params = trainable_parameters(module)
        # The torch optimizer DeepSpeed steps over its flat fp32 partitions.
        self.inner: torch.optim.Optimizer | None = getattr(ds_optimizer, "optimizer", None)

    def tensors(self) -> dict[str, torch.Tensor]:
        from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

        out: dict[str, torch.Tensor] = {}
        for name, param in self.params.items():  # collective: every rank, same order
            out[MODEL_PREFIX + name] = safe_get_full_fp32_param(param).detach().cpu()
        flat_state = next(iter(self.inner.state.values()), None) if self.inner is not None else None
        if flat_state is None:  # no optimizer step yet
            return out
        keys = [k for k, v in flat_state.items() if k != "step" and torch.is_tensor(v) and v.dim() == 1]
        step = flat_state["step"]
        step = step.detach().cpu().clone() if torch.is_tensor(step) else torch.tensor(float(step))
        for name, param in self.params.items():
            out[f"{OPTIM_PREFIX}{name}.step"] = step.clone()  # one tensor per key (no shared storage)
            for key in keys:
                full = safe_get_full_optimizer_state(param, key)
                out[f"{OPTIM_PREFIX}{name}.{key}"] = full.detach().cpu().reshape(full_shape(param))
        return out

    def hyperparameters(self) -> list[dict[str, Any]]:
        return json_hyperparameters(self.inner.param_groups[:1]) if self.inner is not None else []

    def template(self, shapes: dict[str, tuple[torch.Size, torch.dtype]]) -> dict[str, torch.Tensor]:
        mine = {MODEL_PREFIX + n for n in self.params}
        mine |= {
            k
            for k in shapes
            if k.startswith(OPTIM_PREFIX) and k.rsplit(".", 1)[0][len(OPTIM_PREFIX) :] in self.params
        }
        return {k: torch.empty(size, dtype=dtype) for k, (size, dtype) in shapes.items() if k in mine}

    @torch.no_grad()
    def apply(self, loaded: dict[str, torch.Tensor], hyperparameters: list[dict[str, Any]] | None) -> None:
        import deepspeed
        from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

        for name, param in self.params.items():
            value = loaded[MODEL_PREFIX + name]
            safe_set_full_fp32_param(param, value.to(device=param.device, dtype=torch.float32))
            # ZeRO-3: gather, let rank 0's copy win, re-partition; ZeRO-2: a plain copy on every rank.
            with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
                param.data.copy_(value.to(device=param.device, dtype=param.dtype).view_as(param.data))
        keys = sorted({k.rsplit(".", 1)[1] for k in loaded if k.startswith(OPTIM_PREFIX)} - {"step"})
        steps = [v for k, v in loaded.items() if k.startswith(OPTIM_PREFIX) and k.endswith(".step")]
        if self.inner is not None and steps:
            # torch AdamW creates its state lazily at the first step; create it now (zeros, the saved step)
            # so the fragments below have somewhere to go. AdamW then finds it non-empty and keeps it.
            for flat in _flat_fp32_partitions(self.ds_optimizer):
                st = self.inner.state[flat]
                st["step"] = steps[0].detach().clone().to(torch.float32)
                for key in keys:
                    st.setdefault(key, torch.zeros_like(flat))
            # ZeRO-1/2 link each parameter to its slice of the flat state on the first step; do it now.
            link = getattr(self.ds_optimizer, "_lazy_init_hp_params_optimizer_state", None)
            if link is not None:
                link()
            for name, param in self.params.items():
                for key in keys:
                    # A parameter saved without state (it never had a gradient) starts from zeros.
                    value = loaded.get(f"{OPTIM_PREFIX}{name}.{key}")
                    value = torch.zeros(full_shape(param)) if value is None else value
                    safe_set_full_optimizer_state(
                        param, value.to(device=param.device, dtype=torch.float32), key
                    )
        if hyperparameters is not None and self.inner is not None:
            for group, saved in zip(self.inner.param_groups, hyperparameters, strict=False):
                group.update({k: v for k, v in with_types_of(saved, group).items() if k != "params"})


def _flat_fp32_partitions(ds_optimizer: Any) -> list[torch.Tensor]:
    """This rank's flat fp32 master partitions: the tensors DeepSpeed steps the torch optimizer on
    (ZeRO-3 puts them in the torch param groups only during its step, so ask DeepSpeed)."""
    for attr in ("fp32_partitioned_groups_flat", "single_partition_of_fp32_groups"):  # ZeRO-3, ZeRO-1/2
        flats = getattr(ds_optimizer, attr, None)
        if flats is not None:
            return list(flats)
    raise NotImplementedError(f"cannot restore optimizer state into {type(ds_optimizer).__name__}")
