"""The trainable state of a run as checkpoint tensors: the adapters and their optimizer state, keyed by
parameter name (FQN), the same under every parallel layout.

    model.<fqn>           an adapter (e.g. model.transformer.transformer_blocks.0.attn1.to_q.lora_A)
    optim.<fqn>.<key>     its optimizer state (exp_avg, exp_avg_sq, step for AdamW)

Keys by name, not by position: a change in parameter order can never pair moments with the wrong
adapter, and a checkpoint written under one layout loads under any other (DCP reshards).

`TorchTrainable` serves single process, DDP, FSDP2 and HSDP through torch's `get_optimizer_state_dict`
/ `set_optimizer_state_dict` (DTensor moments stay sharded: each rank writes and reads its own rows).
DeepSpeed ZeRO keeps the trainable state in its own flat partitions: `DeepSpeedTrainable`
(deepspeed_state.py) assembles and scatters it through DeepSpeed's public fragment API.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from ltxdist.checkpoint.files import CheckpointMismatchError

MODEL_PREFIX = "model."
OPTIM_PREFIX = "optim."


class Trainable(Protocol):
    """What a checkpoint saves and restores of a training process."""

    params: dict[str, torch.nn.Parameter]  # the adapters, by name

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every checkpoint tensor this rank holds (collective under DeepSpeed)."""
        ...

    def hyperparameters(self) -> list[dict[str, Any]]:
        """The optimizer's param-group settings (lr, betas, ...), JSON."""
        ...

    def template(self, shapes: dict[str, tuple[torch.Size, torch.dtype]]) -> dict[str, torch.Tensor]:
        """Tensors to read into, for the checkpoint's keys (`shapes`: key -> full shape, dtype)."""
        ...

    def apply(self, loaded: dict[str, torch.Tensor], hyperparameters: list[dict[str, Any]] | None) -> None:
        """Install what was read; `hyperparameters` None keeps this optimizer's own (a warm start)."""
        ...


def trainable_parameters(module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


def full_shape(param: torch.Tensor) -> tuple[int, ...]:
    """A parameter's whole shape: a DTensor's global shape, or ZeRO-3's recorded one (its local tensor is
    an empty placeholder)."""
    return tuple(getattr(param, "ds_shape", param.shape))


def check_same_adapters(params: dict[str, torch.Tensor], shapes: dict[str, Any], source: str) -> None:
    """The checkpoint holds exactly this run's adapters, in their shapes; one line naming the flag if not
    (a changed lora.rank keeps every name and changes every shape)."""
    expected = set(params)
    found = {k[len(MODEL_PREFIX) :] for k in shapes if k.startswith(MODEL_PREFIX)}
    if found != expected:
        raise CheckpointMismatchError(
            f"{source}: its adapters do not match this run's LoRA: missing {sorted(expected - found)[:5]}, "
            f"unexpected {sorted(found - expected)[:5]} (did lora.rank / lora.targets / lora.blocks change?)"
        )
    wrong = [n for n in sorted(params) if tuple(shapes[MODEL_PREFIX + n][0]) != full_shape(params[n])]
    if wrong:
        n = wrong[0]
        raise CheckpointMismatchError(
            f"{source}: its LoRA adapters have another shape than this run's ({len(wrong)} tensors, e.g. "
            f"{n}: {tuple(shapes[MODEL_PREFIX + n][0])} saved, {full_shape(params[n])} now): lora.rank "
            "differs; start a new run (run.name=NEW) or set lora.rank back"
        )


def json_hyperparameters(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for group in groups:
        out.append({k: list(v) if isinstance(v, tuple) else v for k, v in group.items() if k != "params"})
    return out


def with_types_of(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """Saved hyper-parameters, with JSON lists turned back into tuples where the optimizer uses tuples."""
    return {
        k: tuple(v) if isinstance(current.get(k), tuple) and isinstance(v, list) else v
        for k, v in saved.items()
    }


def flat_entries(prefix: str, entry: dict[str, Any]) -> dict[str, Any]:
    """An optimizer state entry as `prefix.key` -> value, nested dicts flattened to `prefix.key.sub`
    (bitsandbytes' 8-bit AdamW keeps its quantised moments in `__bnb_optimizer_quant_state__`)."""
    out: dict[str, Any] = {}
    for key, value in entry.items():
        if isinstance(value, dict):
            out.update(flat_entries(f"{prefix}.{key}", value))
        else:
            out[f"{prefix}.{key}"] = value
    return out


def nested_from_loaded(prefix: str, entry: dict[str, Any], loaded: dict[str, torch.Tensor]) -> dict[str, Any]:
    """`entry`'s shape filled from `loaded` (flat names of flat_entries): a value that is not a tensor
    in the optimizer's own state (a Python step counter) comes back as that Python type."""
    out: dict[str, Any] = {}
    for key, value in entry.items():
        name = f"{prefix}.{key}"
        if isinstance(value, dict):
            inner = nested_from_loaded(name, value, loaded)
            if inner:
                out[key] = inner
        elif name in loaded:
            got = loaded[name]
            out[key] = got if torch.is_tensor(value) else type(value)(got.item())
    return out


class TorchTrainable:
    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer | None):
        self.module, self.optimizer = module, optimizer
        self.params = trainable_parameters(module)

    def tensors(self) -> dict[str, torch.Tensor]:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        out: dict[str, torch.Tensor] = {MODEL_PREFIX + n: p.detach() for n, p in self.params.items()}
        # No state yet (every step so far skipped): nothing to save, and asking torch would create it.
        if self.optimizer is not None and self.optimizer.state:
            state = get_optimizer_state_dict(self.module, self.optimizer)["state"]
            for fqn, entry in state.items():
                for name, value in flat_entries(f"{OPTIM_PREFIX}{fqn}", entry).items():
                    out[name] = value if torch.is_tensor(value) else torch.tensor(value)
        return out

    def hyperparameters(self) -> list[dict[str, Any]]:
        return json_hyperparameters(self.optimizer.param_groups) if self.optimizer is not None else []

    def template(self, shapes: dict[str, tuple[torch.Size, torch.dtype]]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {MODEL_PREFIX + n: p.detach() for n, p in self.params.items()}
        if self.optimizer is None or not any(k.startswith(OPTIM_PREFIX) for k in shapes):
            return out
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        # torch creates the optimizer's state (a zero-gradient step at lr 0) so its tensors, sharded
        # like their parameters, can be read into; the state of parameters the checkpoint has none for
        # is dropped again in apply().
        self._template_osd = get_optimizer_state_dict(self.module, self.optimizer)
        for fqn, entry in self._template_osd["state"].items():
            for name, value in flat_entries(f"{OPTIM_PREFIX}{fqn}", entry).items():
                if name in shapes:
                    # A Python value (a step counter) is read into a fresh tensor of the saved kind.
                    out[name] = (
                        value
                        if torch.is_tensor(value)
                        else torch.empty(shapes[name][0], dtype=shapes[name][1])
                    )
        return out

    def apply(self, loaded: dict[str, torch.Tensor], hyperparameters: list[dict[str, Any]] | None) -> None:
        # The adapters were read in place; the optimizer state goes in through torch's FQN-keyed API.
        if self.optimizer is None:
            return
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
            set_optimizer_state_dict,
        )

        template = getattr(self, "_template_osd", None) or get_optimizer_state_dict(
            self.module, self.optimizer
        )
        state: dict[str, dict[str, Any]] = {}
        for fqn, entry in template["state"].items():
            restored = nested_from_loaded(f"{OPTIM_PREFIX}{fqn}", entry, loaded)
            if restored:
                state[fqn] = restored
        # The template's groups: this optimizer's settings, with parameters named.
        groups = [dict(g) for g in template["param_groups"]]
        if hyperparameters is not None:
            if len(hyperparameters) != len(groups):
                raise CheckpointMismatchError(
                    f"the checkpoint's optimizer has {len(hyperparameters)} param groups, this run's "
                    f"{len(groups)}"
                )
            groups = [
                {**g, **with_types_of(saved, g), "params": g["params"]}
                for g, saved in zip(groups, hyperparameters, strict=True)
            ]
        # strict=False: parameters that never had a gradient have no state (as in the run that saved).
        set_optimizer_state_dict(
            self.module,
            self.optimizer,
            {"state": state, "param_groups": groups},
            options=StateDictOptions(strict=False),
        )
        self._template_osd = None
