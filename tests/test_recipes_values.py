"""Every recipe resolves to the values of docs/recipes/published.md (the published trainings, typed in
there from their sources, not read from the code; a wrong value in the table or in a recipe fails, naming
recipe, key, published value and source), the pages show that table, and configs whose adapters could
never train are refused."""

from __future__ import annotations

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from published_values import (
    NOT_REPRODUCTIONS,
    PUBLISHED,
    RECIPES,
    compose,
    mismatches,
    page_block,
    parse_published,
    sections,
)

from ltxdist.config import ConfigError, validate_config
from ltxdist.config.store import CONF_DIR, compose_train_config, register_configs

register_configs()


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("train", overrides=["data.path=/shards", *overrides])


# -- every recipe against docs/recipes/published.md ------------------------------------------------


@pytest.fixture(scope="module")
def published() -> str:
    return PUBLISHED.read_text()


def test_every_recipe_composes_to_the_published_values(published):
    rows = parse_published(published)
    assert len(rows) > 100  # the table was read (a parser that finds nothing would pass vacuously)
    problems = mismatches(rows)
    assert not problems, "recipes differ from docs/recipes/published.md:\n" + "\n".join(problems)


def test_every_experiment_is_a_published_recipe_or_a_declared_demo(published):
    experiments = {p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")}
    in_table = {e for row in parse_published(published) for e in row.experiments}
    assert in_table == experiments - NOT_REPRODUCTIONS
    for section in sections(published):
        validate_config(compose(section.experiments[0]))  # each recipe passes the cross-field checks


def test_a_changed_value_fails_in_the_table_or_in_the_recipe(published):
    rank_row = "| `lora.rank` | `128` | card | |"
    assert published.count(rank_row) == 1
    changed_table = parse_published(published.replace(rank_row, "| `lora.rank` | `64` | card | |"))
    rows = [r for r in changed_table if r.key == "lora.rank" and "ltx23_ic_lora_8xh100" in r.experiments]
    assert mismatches(rows) == [
        "ltx23_ic_lora_8xh100: lora.rank is 128, published 64 (card)",
        "ic_lora_reference_sheet: lora.rank is 128, published 64 (card)",
    ]
    rows = [r for r in parse_published(published) if "ltx23_id_lora_8xh100" in r.experiments]
    changed_recipe = {"ltx23_id_lora_8xh100": ["strategy.mask_ref_audio_to_text=false", "optim.lr=1e-4"]}
    assert mismatches(rows, changed_recipe) == [
        "ltx23_id_lora_8xh100: strategy.mask_ref_audio_to_text is False, published True "
        "(ID-LoRA config: mask_reference_from_text_attention)",
        "ltx23_id_lora_8xh100: optim.lr is 0.0001, published 0.0002 (ID-LoRA config)",
        "ltx23_id_lora_8xh100: lr@[0, 3000, 5999] is [0.0001, 5.500000000000001e-05, 1.0015e-05], published "
        "[0.0002, 0.00011, 2.003e-05] (ID-LoRA config: linear scheduler (ltx-trainer: to 0.1x over the run))",
    ]
    # A departure must be real: the recipe has the stated value, and it is not the published one.
    batch = [r for r in rows if r.key == "global batch"]
    assert len(mismatches(batch, {"ltx23_id_lora_8xh100": ["parallel.devices=4"]})) == 1
    # A range: inside passes, outside fails.
    steps = [
        r
        for r in parse_published(published)
        if r.key == "trainer.max_steps" and r.source == "character guide"
    ]
    assert (
        mismatches(steps) == []
        and len(mismatches(steps, {"character_lora": ["trainer.max_steps=2500"]})) == 1
    )


def test_recipe_pages_show_their_published_values(published):
    for page in sorted({s.page for s in sections(published)}):
        block = page_block(published, page)
        assert block in (RECIPES / page).read_text(), (
            f"docs/recipes/{page} does not show its published values as published.md has them; "
            "run `python tests/published_values.py`"
        )


def test_ddp_refuses_adapters_on_modules_that_never_run():
    # The IC recipe as it was (every attention, audio included) while training no audio stream:
    # DDP would fail at step 2; the config check names the flag and the idle modules.
    with pytest.raises(ConfigError, match=r"^lora\.targets: .*audio_attn1\.to_q.*video_attn"):
        validate_config(_compose("experiment=ltx23_ic_lora_8xh100", "lora.targets=[attn]"))
    with pytest.raises(ConfigError, match=r"^lora\.targets: .*audio_ff\.net\.0\.proj"):
        validate_config(
            _compose("parallel=ddp", "strategy.with_audio=false", "lora=attn_ff", "lora.targets=[audio_ff.*]")
        )
    # Fine where every adapter runs (audio trained) or where idle adapters do not break the step.
    validate_config(
        _compose("experiment=ltx23_ic_lora_8xh100", "lora.targets=[attn]", "strategy.with_audio=true")
    )
    validate_config(
        _compose(
            "experiment=ltx23_ic_lora_8xh100", "lora.targets=[attn]", "parallel=single", "parallel.devices=1"
        )
    )


@pytest.mark.parametrize(
    ("override", "flag"),
    [
        ("strategy.audio_sigma=independent", "strategy.audio_sigma"),
        ("strategy.with_audio=false", "strategy.with_audio"),
    ],
)
def test_audio_ref_only_ic_refuses_flags_it_would_ignore(override, flag):
    validate_config(_compose("strategy=audio_ref_only_ic"))
    # Options of the other strategies: the closed config has no such key for audio_ref_only_ic.
    ours = "not of the selected strategy=audio_ref_only_ic"
    with pytest.raises(ConfigError, match=rf"^{flag}: an option of .*{ours}"):
        compose_train_config(["data.path=/shards", "strategy=audio_ref_only_ic", override])


def test_adamw8bit_with_fsdp2_is_refused_naming_the_flag():
    """bitsandbytes' 8-bit update mixes plain tensors with FSDP2's DTensors and fails at the first step
    (seen on CPU with bitsandbytes 0.50.2): refused before any model is built."""
    with pytest.raises(ConfigError, match=r"^optim: bitsandbytes' AdamW8bit cannot update FSDP2"):
        validate_config(_compose("experiment=ic_lora_reference_sheet", "parallel=fsdp2"))
    validate_config(_compose("experiment=ic_lora_reference_sheet", "parallel=fsdp2", "optim=adamw"))


@pytest.mark.parametrize("parallel", ["deepspeed_zero2", "deepspeed_zero3"])
def test_adamw8bit_with_deepspeed_is_refused_naming_the_flag(parallel):
    """DeepSpeed links only optimizer state of its flat partition's shape: AdamW8bit's qmap/absmax
    raised at the first checkpoint, after training (seen on CPU, 2 ranks, gloo)."""
    with pytest.raises(ConfigError, match=r"^optim: bitsandbytes' AdamW8bit keeps block-quantized state"):
        validate_config(_compose("experiment=ic_lora_reference_sheet", f"parallel={parallel}"))
    validate_config(_compose("experiment=ic_lora_reference_sheet", f"parallel={parallel}", "optim=adamw"))
