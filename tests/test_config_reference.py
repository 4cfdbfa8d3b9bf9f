"""Docs against the code.

- docs/configuration.md is generated from the typed schema by `python -m ltxdist.config.reference`; the
  test fails while the page is stale (after a schema or conf/ change: run that command).
- Every page a user reads (README.md, RELIABILITY.md, docs/**, benchmarks/README.md) names only what
  exists: every repository path or file name, `ltxdist` module, config key (checked against
  docs/configuration.md), `group=option`, metric key and code name, and every `--option` of an
  `ltxdist-*` command (checked against that command's own parser). The overrides of a training command
  (`ltxdist-train`, `-m ltxdist.training.train`, `launch/train.sh`, `slurm/*.sbatch`) are composed and
  validated as the command does before it starts: a misspelt key, an option that does not exist, a
  value of the wrong type or a layout it refuses fails the page. What is not ltxdist's is recognised
  by rule (another project's table column, a shell variable the page sets, a module of an installed
  package, a file the code writes) or listed in _NOT_OURS with the reason. The checker is
  tests/docs_names.py.
- docs/architecture.md, the code map, also has in its metric table exactly the metric keys the code logs
  (a new metric fails the test until the page names it).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from docs_names import ARCHITECTURE, PAGES, architecture_problems, logged_metric_keys, page_problems, relative
from e2e_utils import REPO
from omegaconf import OmegaConf

from ltxdist.config.reference import COMMAND, PAGE, main, render
from ltxdist.config.schema import GROUP_OPTIONS
from ltxdist.config.store import compose_train_config


def _leaf_keys(tree: object, prefix: str = "") -> list[str]:
    if isinstance(tree, dict) and tree:
        return [k for key, value in tree.items() for k in _leaf_keys(value, f"{prefix}{key}.")]
    return [prefix.rstrip(".")]


@pytest.fixture(scope="module")
def rendered() -> str:
    """The page as the command renders it now, once for both tests (it composes every group option)."""
    return render()


def test_the_configuration_reference_is_up_to_date(rendered):
    assert PAGE.read_text() == rendered, f"docs/configuration.md is stale: run `{COMMAND}` (or `make docs`)"


def test_the_reference_lists_every_key_with_default_and_allowed_values(rendered, tmp_path, monkeypatch):
    text = rendered
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
    # --check reports a stale page. Against the page rendered above (each render composes every group
    # option): the up-to-date case below runs main's own render, so main still renders what render() does.
    stale = tmp_path / "configuration.md"
    stale.write_text(
        text.replace("| `trainer.max_steps` | `int` | `1000`", "| `trainer.max_steps` | `int` | `999`")
    )
    with monkeypatch.context() as mp:
        mp.setattr("ltxdist.config.reference.render", lambda: text)
        assert main(["--check", "--out", str(stale)]) == 1
    stale.write_text(text)
    assert main(["--check", "--out", str(stale)]) == 0


def test_the_architecture_page_names_only_what_exists():
    problems = architecture_problems(ARCHITECTURE.read_text(), logged_metric_keys())
    assert not problems, "docs/architecture.md is stale:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("page", [p for p in PAGES if p != ARCHITECTURE], ids=relative)
def test_every_page_names_only_what_exists(page: Path):
    problems = page_problems(relative(page), page.read_text(), logged_metric_keys())
    assert not problems, f"{relative(page)} is stale:\n  " + "\n  ".join(problems)


def test_a_stale_architecture_page_fails_the_check():
    """Not vacuous: a misspelt path, module, config key, option, code name or metric key, and a metric the
    table lacks, are each reported; on the other pages too, with what their own rules let through (a
    file the code writes, another project's column, a shell variable, an installed module, a command's
    options) misspelt, and a training command whose overrides its command would refuse."""
    text, logged = ARCHITECTURE.read_text(), logged_metric_keys()
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
    for page, right, wrong, reported in (
        ("RELIABILITY.md", "`test_nonfinite.py`", "`test_non_finite.py`", "path test_non_finite.py"),
        (
            "RELIABILITY.md",
            "::test_export_never_destroys_an_input",
            "::test_export_never_destroys",
            "defines no",
        ),
        (
            "RELIABILITY.md",
            "`train/nonfinite_skipped`",
            "`train/nonfinite_skips`",
            "metric train/nonfinite_skips",
        ),
        (
            "benchmarks/README.md",
            "ltxdist_kernels/sdpa.py",
            "ltxdist_kernels/spda.py",
            "path ltxdist_kernels/spda",
        ),
        ("docs/sampling.md", "`summary.md`", "`sumary.md`", "path sumary.md"),
        ("docs/sampling.md", "torch.utils.flop_counter", "torch.utils.flop_counters", "flop_counters not in"),
        ("docs/recipes/README.md", "`WORK`", "`WROK`", "name WROK"),
        (
            "docs/from_ltx_trainer.md",
            "| `model.checkpoint` |",
            "| `model.checkpoints` |",
            "model.checkpoints",
        ),
        (
            "docs/from_ltx_trainer.md",
            "ltxdist-prepare --decode",
            "ltxdist-prepare --decoded",
            "no option --decoded",
        ),
        (
            "docs/from_ltx_trainer.md",
            "`ltxdist-sample grid`",
            "`ltxdist-sampel grid`",
            "command ltxdist-sampel",
        ),
        ("docs/distributed.md", "SLURM's `KillWait`", "SLURM's `KillWait` (also `PV`)", "name PV"),
        (
            "docs/sampling.md",
            "--out-dir eval/my_style\n",
            "--outdir eval/my_style\n",
            "grid: no option --outdir",
        ),
        ("docs/sampling.md", "--seed 42 --width", "--seeds 42 --width", "generate: no option --seeds"),
        # A training command's overrides, composed: a misspelt key, a group option that does not exist
        # (through torchrun and through an sbatch file), and a launcher's 8 processes without a layout.
        (
            "README.md",
            "lora.rank=32 lora.alpha",
            "lora.rnak=32 lora.alpha",
            "lora.rnak: not an option of lora",
        ),
        (
            "docs/recipes/style.md",
            "-m ltxdist.training.train experiment=style_lora",
            "-m ltxdist.training.train experiment=styl_lora",
            "ltxdist.training.train: experiment=styl_lora: not an option of experiment",
        ),
        (
            "docs/distributed.md",
            "slurm/train_1node.sbatch parallel=fsdp2",
            "slurm/train_1node.sbatch parallel=fsdp3",
            "slurm/train_1node.sbatch: parallel=fsdp3: not an option of parallel",
        ),
        (
            "docs/distributed.md",
            "NPROC=8 launch/train.sh parallel=fsdp2 model",
            "NPROC=8 launch/train.sh model",
            "launch/train.sh: parallel: parallel=single runs one process",
        ),
        # ... in a code span that goes on to the next line; overrides in prose, each one checked.
        (
            "docs/distributed.md",
            "ltxdist-train parallel=ddp\nparallel.devices=2`",
            "ltxdist-train parallel=ddp\nparallel.device=2`",
            "ltxdist-train: parallel.device: not an option of parallel",
        ),
        ("docs/recipes/id_lora.md", "`parallel=single data", "`parallel=singel data", "parallel/singel.yaml"),
        ("docs/low_vram.md", "num_frames=49`", "num_frame=49`", "config key validation.num_frame:"),
    ):
        page_text = (REPO / page).read_text()
        assert right in page_text, (page, right)
        problems = page_problems(page, page_text.replace(right, wrong), logged)
        assert any(reported in p for p in problems), (page, wrong, problems)
