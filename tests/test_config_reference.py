"""docs/configuration.md is generated from the typed schema by `python -m ltxdist.config.reference`;
this test fails while the page is stale (after a schema or conf/ change: run that command)."""

from __future__ import annotations

import pytest
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
