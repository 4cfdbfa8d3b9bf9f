"""docs/recipes/published.md, the table of published recipe values, read and checked against the recipes.

`parse_published` reads its sections (`<!-- published: EXPERIMENT... page=PAGE -->` ... `<!-- /published -->`)
into rows; `mismatches` composes each experiment through Hydra and lists every value that differs from its
row. `python tests/published_values.py` copies each section into its recipe page (the pages show the
table; tests/test_recipes_values.py checks that they are identical).
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "docs" / "recipes"
PUBLISHED = RECIPES / "published.md"
# Experiments that reproduce nothing published: demos on the tiny model.
NOT_REPRODUCTIONS = frozenset({"tiny_demo", "staged_curriculum_tiny"})

_SECTION = re.compile(r"<!-- published: (?P<head>[^>]*?) -->\n(?P<body>.*?)<!-- /published -->\n", re.S)
_CELL_VALUE = re.compile(r"^`(?P<value>[^`]*)`$")
_DEPARTURE = re.compile(r"^(?:(?P<experiment>\w+) )?`(?P<value>[^`]*)` — (?P<reason>.+)$")
_RANGE = re.compile(r"^(?P<lo>\S+) \.\. (?P<hi>\S+)$")
_LR_AT = re.compile(r"^lr@\[(?P<steps>[\d, ]+)\]$")


@dataclass(frozen=True)
class Range:
    lo: float
    hi: float

    def __repr__(self) -> str:
        return f"{self.lo} .. {self.hi}"


@dataclass(frozen=True)
class Row:
    experiments: tuple[str, ...]
    page: str
    key: str
    published: Any
    source: str
    # experiment (or "*" for all of the section's) -> (ltxdist's value, reason)
    departures: dict[str, tuple[Any, str]] = field(default_factory=dict)

    def expected(self, experiment: str) -> tuple[Any, str | None]:
        """(the value the recipe must have, the departure's reason or None)."""
        dep = self.departures.get(experiment) or self.departures.get("*")
        return (self.published, None) if dep is None else dep


@dataclass(frozen=True)
class Section:
    experiments: tuple[str, ...]
    page: str
    text: str  # the whole marked block, markers included


def _value(text: str) -> Any:
    match = _RANGE.match(text)
    if match:
        return Range(float(match["lo"]), float(match["hi"]))
    return yaml.safe_load(text)


def sections(text: str) -> list[Section]:
    out = []
    for m in _SECTION.finditer(text):
        words = m["head"].split()
        page = next(w.removeprefix("page=") for w in words if w.startswith("page="))
        out.append(Section(tuple(w for w in words if "=" not in w), page, m.group(0)))
    return out


def parse_published(text: str) -> list[Row]:
    rows = []
    for section in sections(text):
        for line in section.text.splitlines():
            cells = (
                [c.strip() for c in line.strip().strip("|").split(" | ")] if line.startswith("| `") else []
            )
            if not cells:
                continue
            if len(cells) == 3:
                cells.append("")
            key_cell, value_cell, source, departs = cells
            key, value = _CELL_VALUE.match(key_cell), _CELL_VALUE.match(value_cell)
            if key is None or value is None:
                raise ValueError(f"published.md: malformed row {line!r}")
            departures = {}
            if departs:
                dep = _DEPARTURE.match(departs)
                if dep is None:
                    raise ValueError(f"published.md: malformed departure in {line!r}")
                departures[dep["experiment"] or "*"] = (_value(dep["value"]), dep["reason"])
            rows.append(
                Row(
                    section.experiments,
                    section.page,
                    key["value"],
                    _value(value["value"]),
                    source,
                    departures,
                )
            )
    return rows


# -- the values a recipe resolves to ----------------------------------------------------------------


def compose(experiment: str, *overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from ltxdist.config.store import CONF_DIR, register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("train", overrides=[f"experiment={experiment}", "data.path=/shards", *overrides])


def adapted_modules(cfg: Any) -> list[str]:
    """Block-inner names of the Linears `lora.targets` adapts (the same names at every model size)."""
    from ltxdist.lora.targets import resolve_target_modules
    from ltxdist.models import build_meta_transformer
    from ltxdist.models.presets import transformer_config

    model = build_meta_transformer(transformer_config("tiny"))
    return sorted({n.split(".", 2)[2] for n in resolve_target_modules(model, list(cfg.lora.targets))})


def lr_at(cfg: Any, steps: list[int]) -> list[float]:
    """The learning rate the run's own scheduler sets at each (0-based) optimizer step."""
    import torch

    from ltxdist.training.optim import build_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optim.lr)
    sched = build_scheduler(opt, cfg.optim.schedule, cfg.optim.lr, cfg.trainer.max_steps)
    return [cfg.optim.lr * sched.lr_lambdas[0](step) for step in steps]


def full_scale_prepare_buckets(page: str) -> list[str]:
    """--buckets of every full-scale (untested) `ltxdist-prepare` command of a recipe page."""
    text = (RECIPES / page).read_text()
    out = []
    for marker, body in re.findall(r"(<!-- tested -->\s*)?```bash\n(.*?)```", text, re.S):
        if marker:
            continue
        for line in body.replace("\\\n", " ").splitlines():
            words = shlex.split(line.strip().removeprefix("do ").strip()) if "ltxdist-prepare" in line else []
            if words and words[0] == "ltxdist-prepare" and "--buckets" in words:
                out.append(words[words.index("--buckets") + 1])
    return out


def _references(cfg: Any) -> str:
    v = cfg.validation
    kinds = set()
    for ref in v.references:
        kinds.add(" + ".join(k for k in ("video", "image", "audio") if ref[k]) or "none")
    if len(v.references) != len(v.prompts):
        return f"{len(v.references)} references for {len(v.prompts)} prompts"
    return kinds.pop() if len(kinds) == 1 else " / ".join(sorted(kinds)) or "none"


def resolve(cfg: Any, key: str, page: str) -> Any:
    from omegaconf import Container, OmegaConf

    if key == "adapted modules":
        return adapted_modules(cfg)
    if key == "global batch":
        p, t = cfg.parallel, cfg.trainer
        return cfg.data.batch_size * t.accumulate_grad_batches * p.devices * p.num_nodes
    if key == "prepare --buckets":
        found = sorted(set(full_scale_prepare_buckets(page)))
        return found[0] if len(found) == 1 else found
    if key == "validation prompts two-part":
        from ltxdist.data.prepare.samples import SHEET_MIN_FRAMES, reference_sheet_problems

        prompts = list(cfg.validation.prompts)
        return bool(prompts) and all(
            "caption" not in reference_sheet_problems(p, SHEET_MIN_FRAMES) for p in prompts
        )
    if key == "validation references":
        return _references(cfg)
    lr = _LR_AT.match(key)
    if lr:
        return lr_at(cfg, [int(s) for s in lr["steps"].split(",")])
    value = OmegaConf.select(cfg, key, throw_on_missing=True)
    return OmegaConf.to_container(value) if isinstance(value, Container) else value


def same(got: Any, want: Any) -> bool:
    if isinstance(want, Range):
        return isinstance(got, int | float) and not isinstance(got, bool) and want.lo <= got <= want.hi
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(map(same, got, want))
    numbers = (int, float)
    if isinstance(want, numbers) and not isinstance(want, bool):
        return (
            isinstance(got, numbers) and not isinstance(got, bool) and math.isclose(got, want, rel_tol=1e-9)
        )
    return got == want


def mismatches(rows: Iterable[Row], overrides: dict[str, list[str]] | None = None) -> list[str]:
    """Every (experiment, key) whose resolved value is not the table's, as a message naming the recipe,
    the key, the published value and its source. `overrides` (per experiment) change a recipe on the fly."""
    overrides = overrides or {}
    configs: dict[str, Any] = {}
    problems = []
    for row in rows:
        for exp in row.experiments:
            if exp not in configs:
                configs[exp] = compose(exp, *overrides.get(exp, []))
            got = resolve(configs[exp], row.key, row.page)
            want, reason = row.expected(exp)
            if reason is not None and same(want, row.published):
                problems.append(
                    f"{exp}: {row.key}: the departure {want!r} is the published value ({row.source})"
                )
            elif not same(got, want):
                departs = f"; ltxdist departs with {want!r}: {reason}" if reason else ""
                problems.append(
                    f"{exp}: {row.key} is {got!r}, published {row.published!r} ({row.source}){departs}"
                )
    return problems


# -- the recipe pages show the table ----------------------------------------------------------------

PAGE_HEADING = "## Published values"
_PAGE_INTRO = (
    "The values this recipe reproduces, from [published.md](published.md) (sources and how to read a row "
    "there; `tests/test_recipes_values.py` checks every one against the composed recipe):\n\n"
)


def page_block(text: str, page: str) -> str:
    """The published-values section a recipe page must contain: its sections of published.md."""
    mine = [s.text for s in sections(text) if s.page == page]
    return f"{PAGE_HEADING}\n\n{_PAGE_INTRO}" + "\n".join(mine) if mine else ""


def sync_pages(text: str) -> list[Path]:
    """Write each page's published-values section (before `## Time and memory`); returns changed pages."""
    changed = []
    for page in sorted({s.page for s in sections(text)}):
        path = RECIPES / page
        old = path.read_text()
        block = page_block(text, page)
        if PAGE_HEADING in old:
            start = old.index(PAGE_HEADING)
            end = old.index("\n## ", start + len(PAGE_HEADING)) + 1
            new = old[:start] + block + "\n" + old[end:]
        else:
            at = old.index("## Time and memory")
            new = old[:at] + block + "\n" + old[at:]
        if new != old:
            path.write_text(new)
            changed.append(path)
    return changed


if __name__ == "__main__":
    for changed_page in sync_pages(PUBLISHED.read_text()):
        print(f"updated {changed_page.relative_to(REPO)}")
