"""benchmarks/gpu_check.sh (its plan: order, interpreter flags, paths) and benchmarks/gpu_summary.py (goal
statuses from results files). The dry run of the whole script takes minutes: run by hand, not here."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _summary():
    spec = importlib.util.spec_from_file_location("gpu_summary", ROOT / "benchmarks" / "gpu_summary.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plan_runs_the_parts_in_order_of_value_without_the_checkout_root_on_the_path(tmp_path) -> None:
    plan = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--print-plan", str(tmp_path / "out")],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    parts = [line.split("]")[0].lstrip("[") for line in plan.splitlines() if line.startswith("[")]
    assert parts == ["setup", "kernel_tests", "fullsize", "kernels", "fp8", "compile", "summary"]
    python_lines = [line for line in plan.splitlines() if "python3" in line and "pip" not in line]
    assert python_lines and all("python3 -P " in line for line in python_lines)  # no cwd on sys.path
    path_line = next(line for line in plan.splitlines() if "PYTHONPATH=" in line)
    entries = path_line.split("PYTHONPATH=")[1].split(":")
    assert [Path(e).name for e in entries] == [".site", "benchmarks"]  # never the checkout root itself
    assert "-m gpu" in plan and "--junitxml" in plan and "--trimmed" in plan
    assert not (tmp_path / "out").exists()  # a plan writes nothing
    fp8 = next(line for line in plan.splitlines() if line.startswith("[fp8]"))
    assert "low_vram_bench.py --gpu" in fp8 and "--caps 0 24" in fp8  # uncapped and the 24 GiB card


def test_a_second_call_runs_only_the_parts_asked_for(tmp_path) -> None:
    """GPU_CHECK_PARTS: the parts a first device call skipped for time, in a call of their own."""
    import os

    plan = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--print-plan", str(tmp_path / "out")],
        capture_output=True, text=True, check=True, timeout=30,
        env={**os.environ, "GPU_CHECK_PARTS": "fp8 compile"},
    ).stdout  # fmt: skip
    parts = [line.split("]")[0].lstrip("[") for line in plan.splitlines() if line.startswith("[")]
    assert parts == ["setup", "fp8", "compile", "summary"]


def test_summary_marks_each_goal_from_the_committed_h200_results() -> None:
    goals = {g["goal"]: g for g in _summary().summarize([ROOT / "benchmarks" / "results"])}
    ic_mfu = goals["IC-LoRA 768x448x121 + ref, r128: MFU"]
    assert ic_mfu["status"] == "not met" and ic_mfu["measured"].startswith("31.9%")
    assert goals["IC-LoRA 768x448x121 + ref, r128: speed-up vs PEFT"]["measured"].startswith("1.39x")
    assert goals["1920x1088x121 + IC ref over SP 8 (emulated rank)"]["status"] == "met"
    # never measured on a GPU yet: unmeasured, not guessed
    for name in (
        "bf16 kernel tests on the GPU (compiled)",
        "LoRA linear fwd+bwd vs the frozen GEMM alone (T >= 3,570, r <= 128)",
        "model.kernels=auto vs torch, every benchmarked shape",
        "per-block torch.compile at 22B",
    ):
        assert goals[name]["status"] == "unmeasured", name


def test_summary_reads_kernel_tests_and_a_compile_timeout(tmp_path) -> None:
    (tmp_path / "kernel_tests.xml").write_text(
        '<testsuites><testsuite name="pytest" tests="9" failures="0" errors="0" skipped="0" time="41.0">'
        "</testsuite></testsuites>"
    )
    (tmp_path / "kernel_tests.seconds").write_text("48\n")
    (tmp_path / "compile.timeout").write_text("per-block compile of 2 blocks timed out after 200s\n")
    goals = {g["goal"]: g for g in _summary().summarize([tmp_path])}
    tests = goals["bf16 kernel tests on the GPU (compiled)"]
    assert tests["status"] == "met" and tests["measured"] == "9 passed, 0 failed, 0 skipped in 48 s"
    assert goals["per-block torch.compile at 22B"]["status"] == "not met"
    (tmp_path / "kernel_tests.seconds").write_text("75\n")  # all passed, but too slow
    goals = {g["goal"]: g for g in _summary().summarize([tmp_path])}
    assert goals["bf16 kernel tests on the GPU (compiled)"]["status"] == "not met"


def test_summary_marks_the_low_vram_goals_from_a_results_file(tmp_path) -> None:
    def row(variant: str, cap: int, status: str = "ok", step_ms: float = 1000.0) -> dict:
        return {"bucket": "960x544x49", "rank": 32, "variant": variant, "cap_gib": cap, "status": status,
                "step_ms": step_ms, "peak_alloc_gib": 20.0}  # fmt: skip

    def goals(rows: list[dict]) -> dict[str, dict]:
        (tmp_path / "low_vram_1xh200_2026-12-05.json").write_text(json.dumps({"rows": rows}))
        return {g["goal"]: g for g in _summary().summarize([tmp_path])}

    capped = "fp8 + block swap, 960x544x49 r32, under a 24 GiB cap"
    speed = "fp8 matmuls vs bf16 step throughput, 960x544x49 r32"
    assert goals([])[capped]["status"] == "unmeasured" and goals([])[speed]["status"] == "unmeasured"
    got = goals([row("bf16", 0, step_ms=1400.0), row("fp8_matmul", 0), row("fp8+offload16", 24)])
    assert got[capped]["status"] == "met" and got[speed]["status"] == "met"
    assert got[speed]["measured"] == "1.40x"
    got = goals([row("bf16", 0, step_ms=1200.0), row("fp8_matmul", 0), row("fp8+offload16", 24, "OOM")])
    assert got[capped]["status"] == "not met" and got[speed]["status"] == "not met"


def test_dry_run_of_the_fp8_part_measures_every_variant(tmp_path) -> None:
    """Part 4 on the tiny model on CPU (its dry run once asked the 2-block model for 16 swapped blocks)."""
    import os

    out = tmp_path / "out"
    subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", str(out)],
        capture_output=True, text=True, check=True, timeout=300,
        env={**os.environ, "GPU_CHECK_PARTS": "fp8", "VENV": str(Path(sys.executable).parents[1])},
    )  # fmt: skip
    parts = dict(line.split("\t")[:2] for line in (out / "gpu_check_parts.tsv").read_text().splitlines()[1:])
    assert parts == {
        "kernel_tests": "not selected",
        "fullsize": "not selected",
        "kernels": "not selected",
        "fp8": "ok",
        "compile": "not selected",
    }
    [results] = out.glob("low_vram_*.json")
    rows = json.loads(results.read_text())["rows"]
    assert {r["variant"] for r in rows} == {"bf16", "fp8", "fp8+offload1", "fp8_matmul"}
    assert all(r["status"] == "ok" for r in rows)
    assert (out / "gpu_check_summary.md").is_file()
