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
    sections = ["--sections", "lora_linear", "qk_norm_rope", "attention", "sdpa", "dispatch"]
    argv = ["--tiny", "--device", "cpu", "--no-compile", "--cpu-repeats", "1", *shapes, *sections]
    argv += ["--out-dir", str(tmp_path)]
    rows = bench.main(argv)
    sdpa_rows = [r for r in rows if r["section"] == "sdpa"]
    rows = [r for r in rows if r["section"] != "sdpa"]  # dispatch needs CUDA: no rows here
    assert [r["section"] for r in rows] == ["lora_linear"] * 2 + ["qk_norm_rope"] * 2 + ["attention"] * 2
    # every call type of the block, with the backend torch's rules give it (no GPU: nothing measured)
    assert len(sdpa_rows) == 12 and all(r["predicted"] in ("cudnn", "efficient") for r in sdpa_rows)
    assert all("actual" not in r for r in sdpa_rows)
    # results files are named <benchmark>_<hardware>_<date>, the hardware slug shared by every benchmark
    (json_file,) = tmp_path.glob(f"kernels-tiny_{hardware_slug()}_*.json")
    (md_file,) = tmp_path.glob(f"kernels-tiny_{hardware_slug()}_*.md")
    payload = json.loads(json_file.read_text())
    assert payload["versions"]["torch"] == torch.__version__
    assert payload["config"]["tokens"] == [6]
    md = md_file.read_text()
    assert "| lora_linear | T=6 W=32 r=2 | eager |" in md and "| lora_linear | T=6 W=32 r=2 | addmm |" in md
    assert "| lora_linear | T=6 W=32 r=2 | frozen_gemm |" in md and "x frozen GEMM" in md
    for row in payload["results"]:
        if row["section"] != "sdpa":
            assert all("median_ms" in t for t in row["timings"].values()), row
    lora = payload["results"][0]
    assert max(lora["errors"]["addmm"].values()) < 1e-5  # LoRALinear's path, fp32 vs fp32 reference
    # what auto dispatch learns from: the timed paths of every lora_linear and qk_norm_rope row
    measured = payload["dispatch_measurements"]
    assert [m["op"] for m in measured] == ["lora_linear"] * 2 + ["qk_norm_rope"] * 2
    assert measured[0]["ms"]["addmm"] == round(lora["timings"]["addmm"]["median_ms"], 4)
    if not HAS_CUDA:  # the kernels ran in the interpreter (fp32): their errors vs fp32 are tiny
        lora = payload["results"][0]
        assert "fused" in lora["timings"]
        assert max(lora["errors"]["fused"].values()) < 1e-5
