"""Smoke test of benchmarks/kernels_bench.py on tiny shapes: it runs, reports, and writes its files."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from kernel_test_utils import HAS_CUDA

from ltxdist.bench.report import hardware_slug

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "kernels_bench.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("kernels_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_writes_json_and_markdown(tmp_path: Path) -> None:
    bench = _load_bench()
    shapes = ["--tokens", "6", "--widths", "32", "16", "--ranks", "2", "--heads", "2", "--dtype", "fp32"]
    sections = ["--sections", "lora_linear", "qk_norm_rope", "attention"]
    argv = ["--tiny", "--device", "cpu", "--no-compile", "--cpu-repeats", "1", *shapes, *sections]
    argv += ["--out-dir", str(tmp_path)]
    rows = bench.main(argv)
    assert [r["section"] for r in rows] == ["lora_linear"] * 2 + ["qk_norm_rope"] * 2 + ["attention"] * 2
    # results files are named <benchmark>_<hardware>_<date>, the hardware slug shared by every benchmark
    (json_file,) = tmp_path.glob(f"kernels-tiny_{hardware_slug()}_*.json")
    (md_file,) = tmp_path.glob(f"kernels-tiny_{hardware_slug()}_*.md")
    payload = json.loads(json_file.read_text())
    assert payload["versions"]["torch"] == torch.__version__
    assert payload["config"]["tokens"] == [6]
    assert "| lora_linear | T=6 W=32 r=2 | eager |" in md_file.read_text()
    for row in payload["results"]:
        assert all("median_ms" in t for t in row["timings"].values()), row
    if not HAS_CUDA:  # the kernels ran in the interpreter (fp32): their errors vs fp32 are tiny
        lora = payload["results"][0]
        assert "fused" in lora["timings"]
        assert max(lora["errors"]["fused"].values()) < 1e-5
