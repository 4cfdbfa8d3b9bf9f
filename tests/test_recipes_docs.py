"""The recipe guides (docs/recipes/*.md) against the code.

- Tiny runs: a block marked `<!-- tested -->` is executed exactly as written; every
  `<!-- expects: PATH -->` must exist afterwards and every `<!-- expects-output: TEXT -->` must appear in
  what the blocks printed.
- Full-scale blocks (the other `bash` blocks): every training command composes through Hydra and passes
  `validate_config` (each curriculum stage too; `torchrun --nproc_per_node` agrees with
  `parallel.devices`), and every `ltxdist-prepare` / `ltxdist-sample` / `ltxdist-export` command parses
  with the CLI's own parser. Nothing is trained. (Every page's `--options` of every ltxdist command, in
  prose and blocks alike, are checked against the same parsers by tests/test_config_reference.py.)
- Every page has the sections and the five commands (prepare, train, sample, grid, export) the guide
  promises, and measured time and memory figures with the machine they were measured on.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from e2e_utils import BIN, REPO

RECIPES = REPO / "docs" / "recipes"
_BLOCK = re.compile(r"<!-- tested -->\s*```bash\n(.*?)```", re.S)
_ANY_BASH = re.compile(r"(<!-- tested -->\s*)?```bash\n(.*?)```", re.S)
_EXPECT = re.compile(r"<!-- expects: (.*?) -->")
_EXPECT_OUTPUT = re.compile(r"<!-- expects-output: (.*?) -->")
PAGES = sorted(p for p in RECIPES.glob("*.md") if _BLOCK.search(p.read_text()))
SECTIONS = (
    "## Dataset layout",
    "## Tiny run",
    "## Full scale",
    "## Good and bad results",
    "## Time and memory",
)
# Stand-ins for the variables the full-scale blocks use (nothing is read from these paths).
FULL_SCALE_ENV = {"LTX_CHECKPOINT_DIR": "/models/ltx-2.3", "GEMMA_DIR": "/models/gemma-3-12b-it"}


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """$MODELS and $CLIPS as docs/recipes/README.md makes them (once for every page)."""
    models, clips = tmp_path_factory.mktemp("models"), tmp_path_factory.mktemp("inputs") / "clips"
    subprocess.run([str(BIN / "ltxdist-tiny-checkpoint"), str(models)], check=True, capture_output=True)
    make_clips = [str(BIN / "ltxdist-prepare"), "--make-demo-clips", str(clips), "--num-clips", "4"]
    subprocess.run(make_clips, check=True, capture_output=True)
    return {"MODELS": str(models), "CLIPS": str(clips)}


def test_every_recipe_page_has_a_tested_block():
    pages = {p.name for p in RECIPES.glob("*.md")} - {"README.md", "published.md"}
    assert pages and pages == {p.name for p in PAGES}


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_recipe_tiny_run_as_documented(page: Path, tiny_inputs: dict[str, str], tmp_path: Path):
    text = page.read_text()
    work = tmp_path / "work"
    work.mkdir()
    env = {
        **os.environ,
        **tiny_inputs,
        "WORK": str(work),
        "OMP_NUM_THREADS": "1",
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }
    printed = ""
    for block in _BLOCK.findall(text):
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, (
            f"{page.name} block failed:\n{block}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        )
        printed += proc.stdout + proc.stderr
    expected = [Path(e.replace("$WORK", str(work))) for e in _EXPECT.findall(text)]
    assert expected, f"{page.name} promises no files"
    missing = [str(p) for p in expected if not p.exists()]
    assert not missing, f"{page.name} promised files that are missing: {missing}"
    for wanted in _EXPECT_OUTPUT.findall(text):
        assert wanted in printed, f"{page.name}: the tiny run did not print {wanted!r}"


# -- page structure ---------------------------------------------------------------------------------
def _blocks(text: str) -> tuple[list[str], list[str]]:
    """(tested blocks, other bash blocks) of a page."""
    tested, other = [], []
    for marker, body in _ANY_BASH.findall(text):
        (tested if marker else other).append(body)
    return tested, other


def _commands(block: str) -> list[str]:
    """Logical command lines: continuation lines joined, comments and blank lines dropped."""
    lines = block.replace("\\\n", " ").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def _uses(commands: list[str], tool: str) -> bool:
    return any(re.search(rf"(^|[\s;&(]){re.escape(tool)}(\s|$)", c) for c in commands)


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_recipe_page_has_every_section_and_command(page: Path):
    text = page.read_text()
    for section in SECTIONS:
        assert section in text, f"{page.name} lacks the section {section!r}"
    tested, full = _blocks(text)
    tiny_cmds = [c for b in tested for c in _commands(b)]
    full_cmds = [c for b in full for c in _commands(b)]
    for tool in ("ltxdist-prepare", "ltxdist-sample", "ltxdist-sample grid", "ltxdist-export"):
        assert _uses(full_cmds, tool), f"{page.name}: no full-scale {tool} command"
    assert any("ltxdist.training.train" in c or _uses([c], "ltxdist-train") for c in full_cmds), page.name
    # The tiny run executes each command for real (the curriculum trains on synthetic latents it writes
    # itself, and says so: no prepare there).
    tiny_tools = ["ltxdist-train", "ltxdist-sample", "ltxdist-sample grid", "ltxdist-export"]
    if page.stem != "staged_curriculum":
        tiny_tools.append("ltxdist-prepare")
    for tool in tiny_tools:
        assert _uses(tiny_cmds, tool), f"{page.name}: the tiny run does not run {tool}"
    # Measured figures, with the machine; full-scale figures only once measured.
    timing = text.split("## Time and memory", 1)[1]
    assert "| command |" in timing and "nproc" in timing and "RAM" in timing, page.name
    assert "pending a GPU run" in timing, page.name


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_every_training_command_names_its_run(page: Path):
    """`run.resume=auto` resumes the run folder of the run's name: a command that leaves the name to the
    experiment would resume another dataset's run (the second character trained 0 steps)."""
    tested, full = _blocks(page.read_text())
    commands = [c for b in [*tested, *full] for c in _commands(b)]
    training = [c for c in commands if _uses([c], "ltxdist-train") or "ltxdist.training.train" in c]
    assert training, page.name
    unnamed = [c for c in training if not re.search(r"(^|\s)run\.name=\S", c)]
    assert not unnamed, f"{page.name}: training commands without run.name=...: {unnamed}"


# -- full-scale commands against the code -----------------------------------------------------------
def _expand(command: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), f"/x/{m.group(1).lower()}"), command)


def _full_scale_commands(page: Path) -> list[list[str]]:
    _, full = _blocks(page.read_text())
    out = []
    for block in full:
        env = dict(FULL_SCALE_ENV)
        for command in _commands(block):
            assignment = re.fullmatch(r"(\w+)=(\S+)", command)
            if assignment:  # e.g. S=/data/curriculum, used by the lines below
                env[assignment.group(1)] = assignment.group(2)
                continue
            if command.startswith(("for ", "done")):
                continue
            words = shlex.split(_expand(command.removeprefix("do ").strip(), env))
            if words and not words[0].startswith("ltxdist-") and "ltxdist.training.train" not in words:
                continue
            out.append(words)
    return out


def _training_overrides(words: list[str]) -> tuple[list[str], int | None]:
    """(Hydra overrides, torchrun's --nproc_per_node or None)."""
    if words[0] == "ltxdist-train":
        return words[1:], None
    i = words.index("ltxdist.training.train")
    nproc = int(words[words.index("--nproc_per_node") + 1]) if "--nproc_per_node" in words else None
    return words[i + 1 :], nproc


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_full_scale_commands_compose_and_parse(page: Path):
    from hydra import compose, initialize_config_dir

    from ltxdist.config.schema import validate_config
    from ltxdist.config.store import CONF_DIR, register_configs
    from ltxdist.data.prepare.cli import build_parser as prepare_parser
    from ltxdist.lora.export_cli import build_parser as export_parser
    from ltxdist.parallel.dims import ParallelDims
    from ltxdist.sampling.cli import build_parser as sample_parser
    from ltxdist.training.checkpointing import check_warm_start_supported
    from ltxdist.training.curriculum import stage_config

    register_configs()
    trained = 0
    for words in _full_scale_commands(page):
        if words[0] == "ltxdist-prepare":
            prepare_parser().parse_args(words[1:])
            continue
        if words[0] == "ltxdist-sample":
            args = words[1:] if words[1] in ("generate", "grid") else ["generate", *words[1:]]
            sample_parser().parse_args(args)
            continue
        if words[0] == "ltxdist-export":
            export_parser().parse_args(words[1:])
            continue
        overrides, nproc = _training_overrides(words)
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=overrides)
        validate_config(cfg)
        if nproc is not None:
            assert cfg.parallel.devices * cfg.parallel.num_nodes == nproc, (
                f"{page.name}: torchrun starts {nproc} processes, parallel.devices is {cfg.parallel.devices}"
            )
        if cfg.stages:
            check_warm_start_supported(ParallelDims.from_config(cfg.parallel), "stages")
            for i in range(len(cfg.stages)):
                validate_config(stage_config(cfg, i, previous=None))
        trained += 1
    assert trained >= 1, f"{page.name}: no full-scale training command"


def test_a_full_scale_command_that_does_not_compose_fails_the_check(tmp_path):
    """The compose check is not vacuous: a misspelt key, or torchrun and parallel.devices disagreeing."""
    page = tmp_path / "bad.md"
    good = _full_scale_commands(RECIPES / "style.md")
    train = next(w for w in good if "ltxdist.training.train" in w)
    page.write_text("## Full scale\n\n```bash\n" + shlex.join(train) + "\n```\n")
    test_full_scale_commands_compose_and_parse(page)  # as written: passes
    for wrong in (
        [*train, "lora.rnak=4"],
        [w.replace("parallel.devices=8", "parallel.devices=4") for w in train],
    ):
        page.write_text("## Full scale\n\n```bash\n" + shlex.join(wrong) + "\n```\n")
        with pytest.raises(Exception):  # noqa: B017 (Hydra's or the assert's, both name the problem)
            test_full_scale_commands_compose_and_parse(page)


# -- the IC reference-sheet checks of ltxdist-prepare ----------------------------------------------------
def test_reference_sheet_checks_frames_and_the_two_part_caption():
    from ltxdist.data.prepare.samples import SHEET_MIN_FRAMES, reference_sheet_problems

    good = "Reference sheet: a knight, front and side views / Generated video: the knight walks"
    assert reference_sheet_problems(good, SHEET_MIN_FRAMES) == {}
    assert set(reference_sheet_problems(good, SHEET_MIN_FRAMES - 8)) == {"frames"}
    for bad in (
        "a knight walks",
        "Generated video: the knight walks / Reference sheet: a knight",
        "Reference sheet: a knight / Generated video:",
        "Reference sheet: / Generated video: the knight walks",
    ):
        assert set(reference_sheet_problems(bad, SHEET_MIN_FRAMES)) == {"caption"}, bad
