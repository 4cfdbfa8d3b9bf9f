"""Docs against the code.

- docs/configuration.md is generated from the typed schema by `python -m ltxdist.config.reference`; the
  test fails while the page is stale (after a schema or conf/ change: run that command).
- docs/architecture.md, the code map, names only what exists: every repository path, `ltxdist` module,
  config key (checked against docs/configuration.md), `group=option` and code name, and in its metric
  table exactly the metric keys the code logs (a new metric fails the test until the page names it).
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

from e2e_utils import REPO
from omegaconf import OmegaConf

from ltxdist.config.reference import COMMAND, PAGE, main, render
from ltxdist.config.schema import GROUP_OPTIONS
from ltxdist.config.store import compose_train_config


def _leaf_keys(tree: object, prefix: str = "") -> list[str]:
    if isinstance(tree, dict) and tree:
        return [k for key, value in tree.items() for k in _leaf_keys(value, f"{prefix}{key}.")]
    return [prefix.rstrip(".")]


def test_the_configuration_reference_is_up_to_date():
    assert PAGE.read_text() == render(), f"docs/configuration.md is stale: run `{COMMAND}` (or `make docs`)"


def test_the_reference_lists_every_key_with_default_and_allowed_values(tmp_path):
    text = render()
    rows = {
        line.split("|")[1].strip().strip("`"): line for line in text.splitlines() if line.startswith("| `")
    }
    # Every key of the composed config (read through OmegaConf, not through the page's own walk).
    for key in _leaf_keys(OmegaConf.to_container(compose_train_config([]), resolve=False)):
        assert key in rows, f"{key} is missing from the reference"
    # ... and of every group option (the closed config has some keys only with their option selected).
    for group, options in GROUP_OPTIONS.items():
        for option in options:
            composed = compose_train_config([f"{group}={option}"])
            for key in _leaf_keys(OmegaConf.to_container(composed[group], resolve=False), f"{group}."):
                assert key in rows, f"{key} (of {group}={option}) is missing from the reference"
    assert "Only with `parallel=fsdp2`" in rows["parallel.reshard_after_forward"]
    assert "`two_phase`" in rows["optim.schedule.name"] and "`1000`" in rows["trainer.max_steps"]
    assert "`force`" in rows["run.resume"] and "`deepspeed_zero3`" in rows["parallel.name"]
    assert "| `model` | `ltx23_22b` |" in text  # the config group table
    # --check reports a stale page.
    stale = tmp_path / "configuration.md"
    stale.write_text(
        text.replace("| `trainer.max_steps` | `int` | `1000`", "| `trainer.max_steps` | `int` | `999`")
    )
    assert main(["--check", "--out", str(stale)]) == 1
    stale.write_text(text)
    assert main(["--check", "--out", str(stale)]) == 0


# -- docs/architecture.md -------------------------------------------------------------------------------
ARCHITECTURE = REPO / "docs" / "architecture.md"
_TICKED = re.compile(r"`([^`\n]+)`")
_REPO_PATH = re.compile(r"^(?:ltxdist|kernels|benchmarks|conf|tests|docs|launch|slurm|scripts)/\S*$")
_MODULE = re.compile(r"\bltxdist(?:_kernels)?(?:\.\w+)+")
_GROUP_CHOICE = re.compile(r"^(\w+)=(\w+)$")
_METRIC_SECTION = re.compile(r"^## 6\. Metric keys\n(.*?)(?=^## |\Z)", re.S | re.M)
# Metric keys are namespaced ("loss/total"); the progress bar's "tok/s" label is not one.
_NAMESPACED = re.compile(r"^[a-z_]+/[\w.-]+(?:/[\w.-]+)?$")
_NOT_METRICS = {"tok/s"}
# A code name (`abandon_later_steps`, `CheckpointAndExport.save`, `LTXDIST_PEAK_TFLOPS`): each dotted part
# must occur as a word in the code. Plain words (`auto`, `never`) are not checked.
_IDENTIFIER = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
_CODE_FILES = (".py", ".sh", ".yaml", ".sbatch", ".toml")


def _module_problem(dotted: str) -> str | None:
    """`ltxdist.a.b` (or `ltxdist_kernels.a`) must be a module or package of the checkout; one trailing
    part may be a name the module defines."""
    parts = dotted.split(".")
    root = REPO / "kernels" if parts[0] == "ltxdist_kernels" else REPO
    for cut in range(len(parts), 0, -1):
        base = root.joinpath(*parts[:cut])
        source = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
        if source.is_file():
            rest = parts[cut:]
            if not rest:
                return None
            name = re.escape(rest[0])
            defined = re.search(rf"^(?:def|class) {name}\b|^{name}\s*[:=]", source.read_text(), re.M)
            return None if len(rest) == 1 and defined else f"{dotted}: {source} defines no {rest[0]}"
    return f"{dotted}: no such module"


def _config_keys() -> tuple[set[str], set[str]]:
    """(every key of docs/configuration.md, the top-level groups it has sections for)."""
    text = (REPO / "docs" / "configuration.md").read_text()
    keys = {ln.split("|")[1].strip().strip("`") for ln in text.splitlines() if ln.startswith("| `")}
    return keys, set(re.findall(r"^## `(\w+)`", text, re.M))


@functools.cache
def _code_words() -> frozenset[str]:
    """Every word of the code a name on the page can come from (not the docs: they would match
    themselves)."""
    roots = ["ltxdist", "kernels", "benchmarks", "conf", "launch", "slurm", "scripts"]
    files = [f for r in roots for f in sorted((REPO / r).rglob("*")) if f.suffix in _CODE_FILES]
    return frozenset(w for f in [*files, REPO / "pyproject.toml"] for w in re.findall(r"\w+", f.read_text()))


def _namespaced_constants(path: Path) -> set[str]:
    strings = (n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant))
    return {s for s in strings if isinstance(s, str) and _NAMESPACED.match(s) and s not in _NOT_METRICS}


def _logged_metric_keys() -> set[str]:
    """What the training metrics can record: the namespaced string constants of ltxdist/tracking and
    ltxdist/training (where metrics are logged), the sigma-bucket losses as TrainingMetrics builds them for
    the training module's bucket edges, and metrics.jsonl's record header."""
    from ltxdist.tracking.metrics import TrainingMetrics, loss_slots
    from ltxdist.training.callbacks import MetricsJsonl
    from ltxdist.training.module import SIGMA_BUCKET_EDGES

    keys: set[str] = set(MetricsJsonl.HEADER)
    keys |= set(loss_slots(TrainingMetrics(bucket_edges=SIGMA_BUCKET_EDGES).buckets))
    for folder in ("tracking", "training"):
        for path in sorted((REPO / "ltxdist" / folder).rglob("*.py")):
            keys |= _namespaced_constants(path)
    return keys


def _metric_problems(text: str, logged: set[str]) -> list[str]:
    """The metric table (section 6) against what the code logs, both ways."""
    section = _METRIC_SECTION.search(text)
    if section is None:
        return ["no '## 6. Metric keys' section"]
    documented = [
        key
        for line in section.group(1).splitlines()
        if line.startswith("| `")
        for key in _TICKED.findall(line.split("|")[1])
    ]
    # `loss/video/sigma_<lo>-<hi>` stands for every bucket of that stream.
    patterns = {
        k: re.compile(re.escape(k).replace("<lo>", r"\d+\.\d+").replace("<hi>", r"\d+\.\d+") + "$")
        for k in documented
    }
    problems = [
        f"metric {k}: not logged by the code" for k, p in patterns.items() if not any(map(p.match, logged))
    ]
    problems += [
        f"metric {key}: logged, but missing from the metric table"
        for key in sorted(logged)
        if not any(p.match(key) for p in patterns.values())
    ]
    return problems


def _choice_problem(token: str) -> str | None:
    """`group=option` of a config group: conf/<group>/<option>.yaml must exist."""
    choice = _GROUP_CHOICE.match(token)
    if choice is None:
        return None
    group, option = REPO / "conf" / choice.group(1), choice.group(2)
    if not group.is_dir() or (group / f"{option}.yaml").is_file():
        return None  # not a config group (e.g. `KEY=VALUE` of a shell line), or the option exists
    return f"{token}: no conf/{choice.group(1)}/{option}.yaml"


def _token_problems(token: str, keys: set[str], groups: set[str]) -> list[str]:
    """What is wrong with one `ticked` name of the page: a repository path, an ltxdist module, a
    `group=option`, a config key or a code name that does not exist."""
    problems = [p for p in map(_module_problem, _MODULE.findall(token)) if p]
    for word in token.split():  # e.g. `launch/train.sh --dry-run`
        fixed = re.split(r"[<*{$]", word, maxsplit=1)[0]  # a path pattern: its fixed part must exist
        if _REPO_PATH.match(word) and not (REPO / fixed).exists():
            problems.append(f"path {word}: not in the checkout")
    problems += filter(None, [_choice_problem(token)])
    key = token.split("=", 1)[0]
    if key.split(".", 1)[0] in groups and re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", key):
        if key not in keys:
            problems.append(f"config key {key}: not in docs/configuration.md")
    elif _IDENTIFIER.fullmatch(token) and ("_" in token or not token.islower()):
        missing = [part for part in token.split(".") if part not in _code_words()]
        if missing:
            problems.append(f"name {token}: {', '.join(missing)} not in the code")
    return problems


def architecture_problems(text: str, logged: set[str]) -> list[str]:
    """Every name of the page that does not exist in the checkout (empty: the page is current)."""
    keys, groups = _config_keys()
    problems = [p for token in _TICKED.findall(text) for p in _token_problems(token, keys, groups)]
    return problems + _metric_problems(text, logged)


def test_the_architecture_page_names_only_what_exists():
    problems = architecture_problems(ARCHITECTURE.read_text(), _logged_metric_keys())
    assert not problems, "docs/architecture.md is stale:\n  " + "\n  ".join(problems)


def test_a_stale_architecture_page_fails_the_check():
    """Not vacuous: a misspelt path, module, config key, option, code name or metric key, and a metric the
    table lacks, are each reported."""
    text, logged = ARCHITECTURE.read_text(), _logged_metric_keys()
    for right, wrong, reported in (
        ("`ltxdist/parallel/dims.py`", "`ltxdist/parallel/dim.py`", "path ltxdist/parallel/dim.py"),
        (
            "python -m ltxdist.checkpoint.convert`",
            "python -m ltxdist.checkpoints.convert`",
            "ltxdist.checkpoints.convert:",
        ),
        ("`model.offload_blocks`", "`model.offload_block`", "config key model.offload_block:"),
        ("`parallel=hsdp`", "`parallel=hsdp2`", "no conf/parallel/hsdp2.yaml"),
        ("`perf/step_time_s`", "`perf/step_time`", "metric perf/step_time: not logged"),
        ("`abandon_later_steps`", "`abandon_later_step`", "name abandon_later_step:"),
        ("`launch/train.sh --dry-run`", "`launch/train_.sh --dry-run`", "path launch/train_.sh"),
    ):
        assert right in text, right
        problems = architecture_problems(text.replace(right, wrong), logged)
        assert any(reported in p for p in problems), (wrong, problems)
    problems = architecture_problems(text, logged | {"perf/new_metric"})
    assert problems == ["metric perf/new_metric: logged, but missing from the metric table"]
