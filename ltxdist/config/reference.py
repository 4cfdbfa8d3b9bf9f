"""`python -m ltxdist.config.reference [--check]`: docs/configuration.md, generated from the typed schema.

Every key of `TrainConfig` (ltxdist/config/schema.py) with its type, the default `ltxdist-train` uses
without overrides (conf/train.yaml composed by Hydra), the allowed values and the schema's own comment;
then the options of every config group with the first comment line of their file. Everything is read at
run time (dataclass fields and their source comments, the composed config, validate_config's membership
checks, conf/), so the page follows the schema: regenerate it after changing either (`make docs`);
tests/test_config_reference.py fails while it is stale.

Allowed values come from, in order: a Literal or Enum type; a bool type; a `_require(cfg.a.b in (...),
"a.b", ...)` check in validate_config; a comment listing them as `x | y | z`; for a group's `name` key,
the group's options in conf/.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import enum
import inspect
import io
import re
import sys
import tokenize
import typing
from pathlib import Path
from typing import Any

from omegaconf import MISSING, OmegaConf

from ltxdist.config import schema
from ltxdist.config.store import CONF_DIR, compose_train_config

PAGE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
COMMAND = "python -m ltxdist.config.reference"
# `a | b (note) | <placeholder>`: values listed in a schema comment
_TOKEN = r"(?:<[^>]+>|[\w.]+)(?:\s*\([^)]*\))?"
_PIPE_LIST = re.compile(rf"({_TOKEN}(?:\s*\|\s*{_TOKEN})+)")


@dataclasses.dataclass(frozen=True)
class KeyDoc:
    key: str
    type: str
    default: str
    allowed: str
    description: str


# -- reading the schema's source ---------------------------------------------------------------------
def _comments_by_line(source: str) -> dict[int, str]:
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string.lstrip("#").strip()
    return out


def _field_docs(module: Any) -> dict[tuple[str, str], tuple[str, str]]:
    """(class, field) -> (annotation as written, comment): the trailing comment on the field's line, or
    the comment lines right above it."""
    source = inspect.getsource(module)
    comments = _comments_by_line(source)
    lines = source.splitlines()
    docs = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        for item in node.body:
            if not (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)):
                continue
            text = comments.get(item.lineno, "") if "#" in lines[item.lineno - 1] else ""
            above, line = [], item.lineno - 1
            while line >= 1 and lines[line - 1].strip().startswith("#"):
                above.insert(0, comments[line])
                line -= 1
            comment = " ".join([*above, text]).strip()
            docs[node.name, item.target.id] = (ast.unparse(item.annotation), comment)
    return docs


def _validated_choices(module: Any) -> dict[str, tuple[str, ...]]:
    """flag -> values, from `_require(<expr> in (values...), "flag", ...)` in the schema module (tuple
    literals, or module-level tuple constants such as PARALLEL_NAMES)."""
    out: dict[str, tuple[str, ...]] = {}
    for node in ast.walk(ast.parse(inspect.getsource(module))):
        if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "_require"):
            continue
        if len(node.args) < 2 or not isinstance(node.args[1], ast.Constant):
            continue
        test = node.args[0]
        if not (isinstance(test, ast.Compare) and isinstance(test.ops[0], ast.In)):
            continue
        values: Any = test.comparators[0]
        if isinstance(values, ast.Name):
            values = getattr(module, values.id, None)
        elif isinstance(values, ast.Tuple):
            values = tuple(getattr(v, "value", None) for v in values.elts)
        if isinstance(values, tuple) and all(isinstance(v, str) for v in values):
            out[str(node.args[1].value)] = values
    return out


# -- conf/ ---------------------------------------------------------------------------------------------
def _first_comment(path: Path) -> str:
    """The first sentence of the comment block that opens a conf/ file."""
    words = []
    for line in path.read_text().splitlines():
        text = line.strip()
        if not text.startswith("#"):
            break
        text = text.lstrip("#").strip()
        if not text.startswith("@package"):
            words.append(text)
    block = " ".join(words)
    end = re.search(r"\.(\s|$)", block)
    return block[: end.start() + 1] if end else block


def group_options(conf_dir: Path) -> dict[str, list[Path]]:
    return {
        group.name: sorted(group.glob("*.yaml"))
        for group in sorted(p for p in conf_dir.iterdir() if p.is_dir())
    }


def _group_defaults(conf_dir: Path) -> dict[str, str]:
    listed = OmegaConf.to_container(OmegaConf.load(conf_dir / "train.yaml")).get("defaults", [])
    return {k: str(v) for item in listed if isinstance(item, dict) for k, v in item.items()}


# -- walking the dataclasses -----------------------------------------------------------------------------
def _allowed(
    key: str,
    hint: Any,
    comment: str,
    validated: dict[str, tuple[str, ...]],
    options: dict[str, list[Path]],
) -> str:
    args = typing.get_args(hint)
    inner = [a for a in args if a is not type(None)] or [hint]
    for candidate in inner:
        if typing.get_origin(candidate) is typing.Literal:
            return " \\| ".join(f"`{v}`" for v in typing.get_args(candidate))
        if isinstance(candidate, type) and issubclass(candidate, enum.Enum):
            return " \\| ".join(f"`{m.value}`" for m in candidate)
    if hint is bool:
        return "`true` \\| `false`"
    group, _, leaf = key.partition(".")
    values = validated.get(key) or (validated.get(group) if leaf == "name" else None)
    if values:
        return " \\| ".join(f"`{v}`" for v in values)
    listed = _PIPE_LIST.search(comment)
    if listed:
        names = [re.sub(r"\s*\(.*\)", "", v).strip() for v in listed.group(1).split("|")]
        return " \\| ".join(f"`{v}`" for v in names)
    if leaf == "name" and group in options:
        return " \\| ".join(f"`{p.stem}`" for p in options[group]) + " (the options of group `" + group + "`)"
    return ""


def _shown(value: Any) -> str:
    if value is MISSING or value == "???":
        return "required"
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list):
        text = "[" + ", ".join(_flat(v) for v in value) + "]"
        return f"`{text}`" if len(text) < 60 else f"`{text[:56]}...]` ({len(value)} entries)"
    if isinstance(value, dict):
        return f"`{_flat(value)}`"
    return f"`{value}`"


def _flat(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flat(v)}" for k, v in value.items()) + "}"
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None else str(value)


def _lookup(tree: Any, key: str) -> Any:
    node = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    return node


def _dataclass_of(hint: Any) -> tuple[type | None, bool]:
    """(the dataclass a field holds, whether as a list of them)."""
    if dataclasses.is_dataclass(hint):
        return hint, False
    if typing.get_origin(hint) is list:
        (element,) = typing.get_args(hint) or (None,)
        if dataclasses.is_dataclass(element):
            return element, True
    return None, False


def walk(
    cls: type,
    prefix: str,
    composed: dict[str, Any] | None,
    docs: dict[tuple[str, str], tuple[str, str]],
    validated: dict[str, tuple[str, ...]],
    options: dict[str, list[Path]],
) -> list[KeyDoc]:
    """One KeyDoc per leaf key under `cls` (nested dataclasses flattened, lists of them as `key[].field`).
    `composed` is the default config as a plain tree, None inside lists (the dataclass defaults apply)."""
    hints = typing.get_type_hints(cls, vars(schema))
    rows = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        annotation, comment = docs.get((cls.__name__, f.name), (str(hints[f.name]), ""))
        nested, as_list = _dataclass_of(hints[f.name])
        if nested is not None:
            rows += walk(
                nested,
                f"{key}[]." if as_list else f"{key}.",
                None if as_list else composed,
                docs,
                validated,
                options,
            )
            if not as_list:
                continue
            default = _lookup(composed, key) if composed is not None else []
            what = comment or f"a list of entries with the `{key}[].` keys"
            rows.append(KeyDoc(key, f"`{annotation}`", _shown(default), "", what))
            continue
        if composed is not None:
            default = _lookup(composed, key)
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = MISSING
        allowed = _allowed(key, hints[f.name], comment, validated, options)
        rows.append(KeyDoc(key, f"`{annotation}`", _shown(default), allowed, comment))
    return rows


def option_only_keys(
    shown: set[str],
    docs: dict[tuple[str, str], tuple[str, str]],
    validated: dict[str, tuple[str, ...]],
    options: dict[str, list[Path]],
) -> list[KeyDoc]:
    """The keys only some options of a group have (schema.GROUP_OPTIONS: the config is closed, so they
    exist only with that option selected), with the default of the first option that has them."""
    found: dict[str, tuple[KeyDoc, list[str]]] = {}
    for group, group_options_ in schema.GROUP_OPTIONS.items():
        for option, cls in group_options_.items():
            selected = OmegaConf.to_container(compose_train_config([f"{group}={option}"]), resolve=False)
            for row in walk(cls, f"{group}.", selected, docs, validated, options):
                if row.key in shown:
                    continue
                _, owners = found.setdefault(row.key, (row, []))
                owners.append(option)
    rows = []
    for key, (row, owners) in found.items():
        group = key.split(".")[0]
        only = " \\| ".join(f"`{group}={o}`" for o in owners)
        rows.append(dataclasses.replace(row, description=f"Only with {only}. {row.description}".strip()))
    return rows


# -- the page --------------------------------------------------------------------------------------------
def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\\\\|", "\\|") if text else ""


def render(conf_dir: Path = CONF_DIR) -> str:
    composed = OmegaConf.to_container(compose_train_config([]), resolve=False)
    docs = _field_docs(schema)
    validated = _validated_choices(schema)
    options = group_options(conf_dir)
    defaults = _group_defaults(conf_dir)
    rows = walk(schema.TrainConfig, "", composed, docs, validated, options)
    rows += option_only_keys({r.key for r in rows}, docs, validated, options)
    out = [
        "# Configuration reference",
        "",
        f"Generated by `{COMMAND}` from the typed schema (`ltxdist/config/schema.py`) and `conf/`; do",
        "not edit by hand (`tests/test_config_reference.py` fails when this page is stale; `make docs`",
        "regenerates it).",
        "",
        "Set any key on the command line (`ltxdist-train lora.rank=16 optim.lr=2e-4`); a misspelt key is an",
        "error that names it. A group option (`model=ltx23_22b`) or an experiment (`experiment=style_lora`)",
        "sets several keys at once. **Default** is what `ltxdist-train` uses without overrides, i.e.",
        "`conf/train.yaml` with its default group options: "
        + ", ".join(f"`{g}={o}`" for g, o in defaults.items() if o != "None")
        + ", no experiment.",
        "",
        "## Config groups",
        "",
        "| group | option | what it sets |",
        "|---|---|---|",
    ]
    for group, paths in options.items():
        for path in paths:
            mark = " (default)" if defaults.get(group) == path.stem else ""
            out.append(f"| `{group}` | `{path.stem}`{mark} | {_cell(_first_comment(path))} |")
    sections: dict[str, list[KeyDoc]] = {}
    for row in rows:
        sections.setdefault(row.key.split(".")[0].split("[")[0], []).append(row)
    for section, section_rows in sections.items():
        out += ["", f"## `{section}`", "", "| key | type | default | allowed values | description |"]
        out.append("|---|---|---|---|---|")
        for r in section_rows:
            out.append(
                f"| `{r.key}` | {_cell(r.type)} | {_cell(r.default)} | {r.allowed} | {_cell(r.description)} |"
            )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PAGE, help=f"default {PAGE.relative_to(PAGE.parents[1])}")
    parser.add_argument("--check", action="store_true", help="exit 1 if the page differs from the schema")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text() if args.out.is_file() else ""
        if current != text:
            print(f"{args.out} is stale: run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    from ltxdist.io import write_bytes_atomic

    write_bytes_atomic(args.out, text.encode())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
