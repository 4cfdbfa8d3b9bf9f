"""A closed config: the composed config holds exactly the keys of the options it selected.

Hydra refuses `lora.rnak=4`, but `+lora.rnak=4` (and `++`) force a key into any node, and a key of an
unselected option (`parallel=ddp parallel.reshard_after_forward=false`) would be accepted if the
group's dataclass held every option's keys. So the schema gives each option of a closed group its own
dataclass (schema.GROUP_OPTIONS) and `check_closed` walks the composed config: every key must be a
field of its node's dataclass, every closed group must hold one of its options, and `name` must be the
selected option's (one selector per group: the Hydra choice).
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from ltxdist.config.schema import GROUP_OPTIONS, ConfigError, TrainConfig


def option_of(group: str, node_type: type | None) -> str | None:
    """The option of `group` whose dataclass is `node_type`, or None (another type, or untyped)."""
    for option, schema in GROUP_OPTIONS.get(group, {}).items():
        if node_type is schema:
            return option
    return None


def _fields(schema: type) -> list[str]:
    return [f.name for f in dataclasses.fields(schema)]


def _choices(group: str) -> str:
    return " | ".join(GROUP_OPTIONS[group])


def _did_you_mean(word: str, candidates: list[str], prefix: str) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


def unknown_key_message(full_key: str, node_type: type | None) -> str:
    """One line for a key that a node of `node_type` does not have: the group and the option the key
    belongs to, or what was probably meant."""
    *parents, key = full_key.split(".")
    where = ".".join(parents)
    prefix = f"{where}." if where else ""
    known = _fields(node_type) if node_type is not None and dataclasses.is_dataclass(node_type) else []
    if not parents:
        what = "a config key or group" if node_type is TrainConfig else "a key there"
        return f"{key}: not {what}{_did_you_mean(key, sorted(known), '')}"
    group = parents[0]
    if group in GROUP_OPTIONS and len(parents) == 1:
        selected = option_of(group, node_type)
        owners = [o for o, schema in GROUP_OPTIONS[group].items() if key in _fields(schema)]
        if owners and selected is not None:
            return (
                f"{full_key}: an option of {group}={' | '.join(owners)}, not of the selected "
                f"{group}={selected} (choose that option, or drop the key)"
            )
        return f"{full_key}: not an option of {group}={selected}{_did_you_mean(key, known, prefix)}"
    return f"{full_key}: not an option of {where}{_did_you_mean(key, known, prefix)}"


def _walk(node: Any, path: str, out: list[tuple[str, type]]) -> None:
    """(full key, node type) of the keys of `node` (and below) that their node's dataclass lacks."""
    if isinstance(node, ListConfig):
        if node._is_missing() or node._is_none():
            return
        for i, item in enumerate(node):
            _walk(item, f"{path}[{i}]", out)
        return
    if not isinstance(node, DictConfig) or node._is_missing() or node._is_none():
        return
    schema = OmegaConf.get_type(node)
    declared = set(_fields(schema)) if schema is not None and dataclasses.is_dataclass(schema) else None
    for key in list(node):
        full = f"{path}.{key}" if path else str(key)
        if declared is not None and key not in declared:
            out.append((full, schema))
            continue
        _walk(node._get_node(key), full, out)


def check_closed(cfg: Any) -> None:
    """Raise ConfigError for the first key, group choice or `name` that the selected options do not
    account for. Untyped configs (a plain YAML or dict) are not checked."""
    if not isinstance(cfg, DictConfig) or not dataclasses.is_dataclass(OmegaConf.get_type(cfg)):
        return
    for group in GROUP_OPTIONS:
        if group not in cfg:
            continue
        node = cfg._get_node(group)
        option = option_of(group, OmegaConf.get_type(node) if isinstance(node, DictConfig) else None)
        if option is None:
            raise ConfigError(
                f"{group}: no option of the group is selected (choose one: {group}=<{_choices(group)}>), "
                "or the selected option's YAML does not name its dataclass "
                f"(`- /schema/{group}/<option>@_here_` first in its defaults; docs/config.md)"
            )
        name = node.get("name") if "name" in node else option
        if name != option:
            raise ConfigError(
                f"{group}.name: the option is chosen with {group}=<{_choices(group)}>; {group}.name "
                f"only follows that choice (selected {group}={option}, {group}.name={name}): use "
                f"{group}={name} instead"
            )
    extra: list[tuple[str, type]] = []
    _walk(cfg, "", extra)
    if extra:
        raise ConfigError(unknown_key_message(*extra[0]))
