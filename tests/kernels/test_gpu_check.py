"""benchmarks/gpu_check.sh (its plan: order, interpreter flags, paths) and benchmarks/gpu_summary.py (goal
statuses from results files). The dry run of the whole script takes minutes: run by hand, not here."""

from __future__ import annotations

import importlib.util
import subprocess
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
    assert parts == ["setup", "kernel_tests", "fullsize", "kernels", "compile", "summary"]
    python_lines = [line for line in plan.splitlines() if "python3" in line and "pip" not in line]
    assert python_lines and all("python3 -P " in line for line in python_lines)  # no cwd on sys.path
    path_line = next(line for line in plan.splitlines() if "PYTHONPATH=" in line)
    entries = path_line.split("PYTHONPATH=")[1].split(":")
    assert [Path(e).name for e in entries] == [".site", "benchmarks"]  # never the checkout root itself
    assert "-m gpu" in plan and "--junitxml" in plan and "--trimmed" in plan
    assert not (tmp_path / "out").exists()  # a plan writes nothing
    script = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    assert "SLOT: fp8 frozen base" in script and script.index("SLOT: fp8") < script.index("# -- 6. summary")


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
