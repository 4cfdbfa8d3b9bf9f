"""Hydra's and OmegaConf's composition errors as one line that names the key, its group and what was
probably meant (`ConfigError`). Their own messages span several lines, some name neither (a config group
given a number: "Config group override must be a string or a list. Got int"), and some suggest the
wrong fix (`+lora.rnak=4` for a misspelt `lora.rank`)."""

from __future__ import annotations

import dataclasses
import difflib
import re

from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
)

from ltxdist.config.closure import unknown_key_message
from ltxdist.config.schema import GROUP_OPTIONS, ConfigError, TrainConfig


def _conf_dir():  # late: store.py imports this module
    from ltxdist.config.store import CONF_DIR

    return CONF_DIR


def group_choices(group: str) -> list[str]:
    """The options a user can choose for `group` (its YAML files)."""
    return sorted(p.stem for p in (_conf_dir() / group).glob("*.yaml"))


def _groups() -> list[str]:
    return sorted(p.name for p in _conf_dir().iterdir() if p.is_dir())


def _bad_choice(group: str, value: str, where: str = "") -> str:
    choices = group_choices(group)
    close = difflib.get_close_matches(value, choices, n=1, cutoff=0.5)
    hint = f"; did you mean {group}={close[0]}?" if close else ""
    return f"{group}={value}{where}: not an option of {group} (choices: {' | '.join(choices)}){hint}"


def _parse(override: str):  # -> hydra Override | None
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_overrides([override])[0]
    except OverrideParseException:
        return None


def _first_line(text: str) -> str:
    return next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")


def _schema_named(name: str) -> type | None:
    """A dataclass of the schema by its class name (OmegaConf messages name the type)."""
    pending = [TrainConfig, *(s for options in GROUP_OPTIONS.values() for s in options.values())]
    seen: set[type] = set()
    while pending:
        schema = pending.pop()
        if schema in seen:
            continue
        seen.add(schema)
        if schema.__name__ == name:
            return schema
        for f in dataclasses.fields(schema):
            if isinstance(f.type, type) and dataclasses.is_dataclass(f.type):
                pending.append(f.type)
            elif isinstance(f.type, str):  # `from __future__ import annotations`: resolve by default
                default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
                if dataclasses.is_dataclass(default):
                    pending.append(type(default))
    return None


def explain_read_error(exc: OmegaConfBaseException) -> ConfigError:
    """One line for a value that cannot be read once composed: a mandatory value left unset (`???`), an
    interpolation that does not resolve."""
    key = getattr(exc, "full_key", None)
    if isinstance(exc, MissingMandatoryValue) and key:
        return ConfigError(f"{key}: no value given; set {key}=...")
    return ConfigError(f"{key}: {_first_line(str(exc))}" if key else _first_line(str(exc)))


def explain_compose_error(exc: BaseException, overrides: list[str]) -> ConfigError | None:
    """A one-line ConfigError for a failed `compose("train", overrides)`, or None when `exc` is not a
    config mistake (then the caller re-raises it)."""
    message, cause = str(exc), exc.__cause__
    groups = _groups()

    # `parallel=0`, `parallel=null`: Hydra's message names neither the group nor its choices.
    if isinstance(exc, ValueError) and message.startswith("Config group override must be"):
        for override in overrides:
            parsed = _parse(override)
            if parsed is None or parsed.key_or_group not in groups:
                continue
            if not isinstance(parsed.value(), (str, list)):
                return ConfigError(_bad_choice(parsed.key_or_group, override.split("=", 1)[1]))
        return ConfigError(f"a config group was given a value that is not an option name: {overrides}")

    # `parallel=foo`, or an experiment naming a missing option.
    if isinstance(exc, MissingConfigException):
        found = re.search(r"Could not (?:find|load) '([^']+)/([^'/]+)'", message)
        inside = re.match(r"In '([^']+)'", message)
        if found:
            group, value = found.groups()
            where = f" (in {inside.group(1)})" if inside and inside.group(1) != "train" else ""
            if (_conf_dir() / group).is_dir():
                return ConfigError(_bad_choice(group, value, where))
        return ConfigError(_first_line(message))

    if isinstance(exc, OverrideParseException):
        bad = next((o for o in overrides if _parse(o) is None), None)
        return ConfigError(f"{bad or overrides}: not a valid override ({_first_line(message)})")

    # A key the selected options do not have (`lora.rnak=4`, `parallel=ddp parallel.reshard_...`), on
    # the command line (the cause carries the key) or inside a YAML file (only the message does).
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and cause.full_key:
        text = unknown_key_message(cause.full_key, cause.object_type)
        merging = re.match(r"(?:Error merging override|Could not override) '?([^=\s']+)", message)
        if merging and not cause.full_key.startswith(merging.group(1)):  # a key inside the given value
            text = f"{merging.group(1)}: in its value, {text}"
        return ConfigError(text)
    in_yaml = re.search(r"Key '[^']+' not in '(\w+)'\s+full_key: (\S+)", message)
    if in_yaml:
        inside = re.match(r"In '([^']+)'", message)
        text = unknown_key_message(in_yaml.group(2), _schema_named(in_yaml.group(1)))
        return ConfigError(f"{text} (in {inside.group(1)})" if inside else text)

    # A value of the wrong type (`lora.rank=abc`) and anything else Hydra or OmegaConf refuses.
    if isinstance(cause, OmegaConfBaseException):
        key = getattr(cause, "full_key", None)
        given = [o.split("=", 1)[1] for o in overrides if key and o.lstrip("+~").startswith(f"{key}=")]
        value = given[-1] if given else None
        head = f"{key}={value}" if value is not None else (key or _first_line(message))
        return ConfigError(f"{head}: {_first_line(str(cause))}")
    if isinstance(exc, (HydraException, OmegaConfBaseException)):
        key = getattr(exc, "full_key", None)
        return ConfigError(f"{key}: {_first_line(message)}" if key else _first_line(message))
    return None
