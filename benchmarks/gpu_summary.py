"""One table of the speed and memory goals (issues 8, 10, 16, 21) from results files: measured value, goal,
met / not met / unmeasured. Only what a results file holds counts: no file (or no row) for a goal is
"unmeasured".

    python benchmarks/gpu_summary.py DIR [DIR ...] [--write OUT.md]

Reads, per benchmark, the newest `<name>_<hardware>_<date>.json` in the given folders whose hardware is a
GPU (fullsize, kernels, compile, sequence_parallel) and the kernel tests' `kernel_tests.xml` (JUnit) with
its wall time in `kernel_tests.seconds`. benchmarks/gpu_check.sh runs it last; benchmarks/README.md shows
its table for the committed results.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

MET, NOT_MET, UNMEASURED = "met", "not met", "unmeasured"
_STEM = re.compile(r"^(?P<name>[a-z_-]+)_(?P<hw>\d+x[a-z0-9]+)_(?P<date>\d{4}-\d{2}-\d{2})\.json$")


def newest(dirs: list[Path], name: str) -> Path | None:
    """The newest GPU results file of benchmark `name` in `dirs` (by date, then folder order)."""
    found = []
    for order, d in enumerate(dirs):
        for path in d.glob(f"{name}_*.json"):
            m = _STEM.match(path.name)
            if m and m["name"] == name:
                found.append((m["date"], order, path))
    return max(found)[2] if found else None


def _load(path: Path | None) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path is not None else None


def _goal(goal: str, target: str, value: str, status: str, source: Path | None) -> dict[str, str]:
    return {"goal": goal, "target": target, "measured": value, "status": status, "source": _rel(source)}


def _rel(path: Path | None) -> str:
    if path is None:
        return "-"
    parts = path.resolve().parts
    return "/".join(parts[parts.index("benchmarks") :]) if "benchmarks" in parts else path.name


def fullsize_goals(path: Path | None) -> list[dict[str, str]]:
    data = _load(path)
    rows = [r for r in (data or {}).get("rows", []) if r.get("status") == "ok"]
    ratios = (data or {}).get("tables", {}).get("ltxdist vs PEFT (step time ratio, > 1: ltxdist faster)", [])
    out = []
    for work, label, mfu_goal, peft_goal in (
        ("ic_lora", "IC-LoRA 768x448x121 + ref, r128", 0.45, 1.8),
        ("standard", "standard 960x544x49 + audio, r32", 0.35, 1.5),
    ):
        mine = [r for r in rows if r["workload"] == work and r["trainer"].startswith("ltxdist")]
        best = max(mine, key=lambda r: r["mfu"] if isinstance(r["mfu"], float) else 0.0, default=None)
        if best is None or not isinstance(best["mfu"], float):
            out.append(_goal(f"{label}: MFU", f">= {mfu_goal:.0%}", "-", UNMEASURED, path))
        else:
            value = f"{best['mfu']:.1%} ({best['trainer']}, AC {best['ac']}, {best['step_ms']:.0f} ms)"
            out.append(
                _goal(f"{label}: MFU", f">= {mfu_goal:.0%}", value, _met(best["mfu"] >= mfu_goal), path)
            )
        speedups = [r for r in ratios if r["workload"] == work]
        top = max(speedups, key=lambda r: r["speedup_vs_peft"], default=None)
        if top is None:
            out.append(_goal(f"{label}: speed-up vs PEFT", f">= {peft_goal}x", "-", UNMEASURED, path))
        else:
            value = f"{top['speedup_vs_peft']:.2f}x ({top['ltxdist']}, AC {top['ac']})"
            out.append(
                _goal(
                    f"{label}: speed-up vs PEFT",
                    f">= {peft_goal}x",
                    value,
                    _met(top["speedup_vs_peft"] >= peft_goal),
                    path,
                )
            )
        peaks = [r["peak_alloc_gib"] for r in mine if isinstance(r.get("peak_alloc_gib"), float)]
        if best is not None and isinstance(best.get("peak_alloc_gib"), float):
            peak = best["peak_alloc_gib"]
            out.append(
                _goal(
                    f"{label}: peak memory (fastest row)",
                    "<= 80 GiB",
                    f"{peak:.1f} GiB",
                    _met(peak <= 80),
                    path,
                )
            )
        elif not peaks:
            out.append(_goal(f"{label}: peak memory", "<= 80 GiB", "-", UNMEASURED, path))
    out.append(auto_vs_torch(rows, path))
    out.append(memory_model(rows, path))
    return out


def _met(ok: bool) -> str:
    return MET if ok else NOT_MET


def auto_vs_torch(rows: list[dict[str, Any]], path: Path | None) -> dict[str, str]:
    goal, target = "model.kernels=auto vs torch, every benchmarked shape", "never slower (within 2% noise)"
    by_key = {(r["workload"], r["rank"], r["ac"], r["trainer"]): r for r in rows}
    pairs = []
    for (work, rank, ac, trainer), r in by_key.items():
        off = by_key.get((work, rank, ac, "ltxdist kernels off"))
        if trainer == "ltxdist kernels auto" and off is not None:
            pairs.append((f"{work} AC {ac}", r["step_ms"] / off["step_ms"]))
    if not pairs:
        return _goal(goal, target, "-", UNMEASURED, path)
    worst = max(pairs, key=lambda p: p[1])
    value = ", ".join(f"{name} {ratio:.3f}x" for name, ratio in pairs) + " (auto / torch step time)"
    return _goal(goal, target, value, _met(worst[1] <= 1.02), path)


def memory_model(rows: list[dict[str, Any]], path: Path | None) -> dict[str, str]:
    goal, target = "activation memory model (AC plans)", "predicted peak within 10% of measured"
    errors = [
        (f"{r['workload']} AC {r['ac']}", r["predicted_peak_gib"] / r["peak_alloc_gib"] - 1)
        for r in rows
        if isinstance(r.get("predicted_peak_gib"), float) and isinstance(r.get("peak_alloc_gib"), float)
    ]
    if not errors:
        return _goal(goal, target, "-", UNMEASURED, path)
    worst = max(errors, key=lambda e: abs(e[1]))
    value = f"worst {worst[0]}: {worst[1]:+.1%} over {len(errors)} rows"
    return _goal(goal, target, value, _met(abs(worst[1]) <= 0.10), path)


def kernel_goals(path: Path | None) -> list[dict[str, str]]:
    data = _load(path)
    rows = (data or {}).get("results", [])
    out = []
    lora = [r for r in rows if r.get("section") == "lora_linear" and r["tokens"] >= 3570 and r["rank"] <= 128]
    ratios = []
    for r in lora:
        t = r["timings"]
        floor = t.get("frozen_gemm", {}).get("median_ms")
        paths = {v: t[v]["median_ms"] for v in ("addmm", "fused") if "median_ms" in t.get(v, {})}
        if floor and paths:
            best = min(paths, key=paths.__getitem__)
            ratios.append((f"T={r['tokens']} W={r['width']} r={r['rank']} {best}", paths[best] / floor))
    goal = "LoRA linear fwd+bwd vs the frozen GEMM alone (T >= 3,570, r <= 128)"
    if not ratios:
        out.append(_goal(goal, "<= 1.10x", "-", UNMEASURED, path))
    else:
        worst = max(ratios, key=lambda p: p[1])
        value = "; ".join(f"{n} {x:.2f}x" for n, x in ratios)
        out.append(_goal(goal, "<= 1.10x", value, _met(worst[1] <= 1.10), path))
    sdpa = [r for r in rows if r.get("section") == "sdpa"]
    goal = "every attention call type on the fastest SDPA backend (cuDNN on H100/H200)"
    measured = [r for r in sdpa if "actual" in r]
    if not measured:
        out.append(_goal(goal, "cudnn", "-", UNMEASURED, path))
    else:
        off = [f"{r['call']}: {r['actual']}" for r in measured if r["actual"] != "cudnn"]
        value = "all cudnn" if not off else "; ".join(off)
        out.append(_goal(goal, "cudnn", f"{value} ({len(measured)} call types)", _met(not off), path))
    return out


def kernel_test_goal(dirs: list[Path]) -> dict[str, str]:
    goal, target = "bf16 kernel tests on the GPU (compiled)", "all pass in < 60 s"
    xml = next((d / "kernel_tests.xml" for d in dirs if (d / "kernel_tests.xml").is_file()), None)
    if xml is None:
        return _goal(goal, target, "-", UNMEASURED, None)
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    tests, failed = int(suite.get("tests", 0)), int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    skipped = int(suite.get("skipped", 0))
    seconds_file = xml.with_suffix(".seconds")
    wall = float(seconds_file.read_text()) if seconds_file.is_file() else float(suite.get("time", 0))
    value = f"{tests - failed - skipped} passed, {failed} failed, {skipped} skipped in {wall:.0f} s"
    if tests == skipped:  # no GPU: every test skipped, nothing was measured
        return _goal(goal, target, value, UNMEASURED, xml)
    return _goal(goal, target, value, _met(failed == 0 and wall < 60), xml)


def compile_goal(path: Path | None, dirs: list[Path]) -> dict[str, str]:
    goal, target = "per-block torch.compile at 22B", "compiles < 2 min and pays off"
    timed_out = next((d / "compile.timeout" for d in dirs if (d / "compile.timeout").is_file()), None)
    if timed_out is not None:
        return _goal(goal, target, timed_out.read_text().strip(), NOT_MET, timed_out)
    data = _load(path)
    rows = {r["variant"]: r for r in (data or {}).get("rows", []) if r.get("status") == "ok"}
    if "compiled" not in rows or "eager" not in rows or data["config"].get("preset") != "ltx23_22b":
        return _goal(goal, target, "-", UNMEASURED, path)
    c, e = rows["compiled"], rows["eager"]
    value = f"first step {c['first_step_s']:.0f} s; step {c['step_ms']:.0f} vs eager {e['step_ms']:.0f} ms"
    return _goal(goal, target, value, _met(c["first_step_s"] < 120 and c["step_ms"] < e["step_ms"]), path)


def sequence_parallel_goal(path: Path | None) -> dict[str, str]:
    goal, target = "1920x1088x121 + IC ref over SP 8 (emulated rank)", "fits 80 GiB per GPU"
    data = _load(path)
    rows = [r for r in (data or {}).get("rows", []) if r.get("status") == "ok" and r.get("sp") == 8]
    if not rows:
        return _goal(goal, target, "-", UNMEASURED, path)
    r = max(rows, key=lambda r: r["tokens"])
    value = f"{r['rank_memory_gib_fsdp8']:.1f} GiB, {r['step_s']:.2f} s per step ({r['tokens']} tokens)"
    return _goal(goal, target, value, _met(bool(r["fits_budget"])), path)


def low_vram_goals(path: Path | None) -> list[dict[str, str]]:
    """Issue 16: fp8 + block swap trains 960x544x49 r32 under a 24 GiB cap; fp8 matmuls >= 1.3x bf16."""
    data = _load(path)
    rows = [
        r for r in (data or {}).get("rows", []) if r.get("bucket") == "960x544x49" and r.get("rank") == 32
    ]
    goal, target = "fp8 + block swap, 960x544x49 r32, under a 24 GiB cap", "trains (no OOM)"
    capped = [r for r in rows if r["variant"].startswith("fp8+offload") and r.get("cap_gib") == 24]
    if not capped:
        out = [_goal(goal, target, "-", UNMEASURED, path)]
    else:
        r = capped[0]
        value = f"{r['status']}, peak {r.get('peak_alloc_gib', '-')} GiB, {r.get('step_ms', '-')} ms per step"
        out = [_goal(goal, target, value, _met(r["status"] == "ok"), path)]
    uncapped = {r["variant"]: r for r in rows if not r.get("cap_gib") and r.get("status") == "ok"}
    goal, target = "fp8 matmuls vs bf16 step throughput, 960x544x49 r32", ">= 1.3x"
    if "fp8_matmul" not in uncapped or "bf16" not in uncapped:
        out.append(_goal(goal, target, "-", UNMEASURED, path))
    else:
        ratio = uncapped["bf16"]["step_ms"] / uncapped["fp8_matmul"]["step_ms"]
        out.append(_goal(goal, target, f"{ratio:.2f}x", _met(ratio >= 1.3), path))
    return out


def summarize(dirs: list[Path]) -> list[dict[str, str]]:
    goals = [kernel_test_goal(dirs)]
    goals += fullsize_goals(newest(dirs, "fullsize"))
    goals += kernel_goals(newest(dirs, "kernels"))
    goals.append(compile_goal(newest(dirs, "compile"), dirs))
    goals.append(sequence_parallel_goal(newest(dirs, "sequence_parallel")))
    goals += low_vram_goals(newest(dirs, "low_vram"))
    return goals


def markdown(goals: list[dict[str, str]]) -> str:
    lines = ["| goal | target | measured | status | results file |", "|---|---|---|---|---|"]
    lines += [
        f"| {g['goal']} | {g['target']} | {g['measured']} | **{g['status']}** | {g['source']} |"
        for g in goals
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dirs", nargs="+", type=Path)
    p.add_argument("--write", type=Path, default=None, help="also write the table to this markdown file")
    args = p.parse_args(argv)
    table = markdown(summarize(args.dirs))
    print(table)
    if args.write is not None:
        args.write.write_text(table + "\n")
    return table


if __name__ == "__main__":
    main(sys.argv[1:])
