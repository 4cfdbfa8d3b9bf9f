"""The recipe guides' tiny-run commands, run exactly as written (docs/recipes/*.md), and the files
each guide promises. A block marked `<!-- tested -->` is executed; `<!-- expects: PATH -->` must exist."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from e2e_utils import BIN, REPO

RECIPES = REPO / "docs" / "recipes"
_BLOCK = re.compile(r"<!-- tested -->\s*```bash\n(.*?)```", re.S)
_EXPECT = re.compile(r"<!-- expects: (.*?) -->")
PAGES = sorted(p for p in RECIPES.glob("*.md") if _BLOCK.search(p.read_text()))


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = tmp_path_factory.mktemp("models")
    subprocess.run([str(BIN / "ltxdist-tiny-checkpoint"), str(models)], check=True, capture_output=True)
    return models


def test_every_recipe_page_has_a_tested_block():
    pages = {p.name for p in RECIPES.glob("*.md")} - {"README.md"}
    assert pages and pages == {p.name for p in PAGES}


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_recipe_tiny_run_as_documented(page: Path, tiny_models: Path, tmp_path: Path):
    text = page.read_text()
    work = tmp_path / "work"
    work.mkdir()
    env = {
        **os.environ,
        "MODELS": str(tiny_models),
        "WORK": str(work),
        "OMP_NUM_THREADS": "1",
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }
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
    expected = [Path(e.replace("$WORK", str(work))) for e in _EXPECT.findall(text)]
    assert expected, f"{page.name} promises no files"
    missing = [str(p) for p in expected if not p.exists()]
    assert not missing, f"{page.name} promised files that are missing: {missing}"
