"""`ltxdist-bench`: run a benchmark suite and collect its results files.

  ltxdist-bench --suite cpu            step time + start-up vs the baseline, data streaming, checkpoint
                                       save/load (any machine)
  ltxdist-bench --suite gpu            full-size 22B step vs PEFT, kernels, parallel layouts (needs CUDA)
  ltxdist-bench --only step            one benchmark of a suite
  ltxdist-bench --suite cpu --quick    fewer repeats and samples: a smoke run, labelled "-quick" in its
                                       file names and reports, judging no target
  ltxdist-bench --out-dir DIR          results elsewhere (default: benchmarks/results of the ltxdist
                                       checkout you are in, runs/bench outside one)

Each benchmark is a script in benchmarks/ that warms up, repeats, prints a table and writes
<out-dir>/<name>_<hardware>_<date>.{json,md}; the runner adds a suite summary beside them.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import time
from pathlib import Path

# The scripts that run: those of the installed ltxdist's source tree (they import that ltxdist).
BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"

# name -> (script, full args, quick args)
SUITES: dict[str, dict[str, tuple[str, list[str], list[str]]]] = {
    # --suite cpu must finish within 10 minutes on a 2-core machine (issue 8).
    "cpu": {
        "step": (
            "step_bench.py",
            ["--presets", "tiny", "small", "--steps", "15", "--warmup", "3", "--repeats", "2"],
            ["--presets", "tiny", "--steps", "3", "--warmup", "1", "--repeats", "1", "--samples", "8"],
        ),
        "data": (
            "data_bench.py",
            ["--num-samples", "10000", "--small-samples", "1000"],
            ["--num-samples", "400", "--small-samples", "100", "--chunks", "3", "--first-batch-repeats", "1"],
        ),
        "checkpoint": (
            "checkpoint_bench.py",
            ["--sizes-mb", "16", "64", "256", "--ranks", "1", "2", "4", "--repeats", "3"],
            ["--sizes-mb", "8", "--ranks", "1", "2", "--repeats", "1"],
        ),
    },
    "gpu": {
        "fullsize": ("fullsize_bench.py", [], ["--trimmed"]),
        "kernels": ("kernels_bench.py", [], ["--ranks", "32", "--tokens", "5376", "--no-e2e"]),
        "parallel": ("parallel_bench.py", [], ["--configs", "ddp", "fsdp2", "--steps", "3"]),
        "sequence_parallel": (
            "sequence_parallel_bench.py",
            ["--ic"],
            ["--clips", "768x448x121;1920x1088x121", "--sp-sizes", "1,8", "--ic", "--steps", "2"],
        ),
        "step": (
            "step_bench.py",
            ["--presets", "small", "--dtype", "bfloat16", "--steps", "50"],
            ["--presets", "small", "--dtype", "bfloat16", "--steps", "10", "--repeats", "1"],
        ),
    },
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ltxdist-bench",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--suite", choices=sorted(SUITES), default="cpu")
    parser.add_argument("--only", nargs="+", default=None, help="benchmark names within the suite")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: fewer repeats and samples, labelled, no verdicts"
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="where results files go (default: benchmarks/results of this checkout, else runs/bench)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    import torch  # after parsing: --help stays fast

    from ltxdist.bench.report import QUICK_ENV, default_results_dir, hardware_slug, results_stem
    from ltxdist.io import write_bytes_atomic

    args.out_dir = (args.out_dir or default_results_dir()).resolve()
    env = {k: v for k, v in os.environ.items() if k != QUICK_ENV}
    if args.quick:
        env[QUICK_ENV] = "1"  # the scripts label their results files and judge no target
    if args.suite == "gpu" and not torch.cuda.is_available():
        parser.error("--suite gpu needs a CUDA device; use --suite cpu here")
    suite = SUITES[args.suite]
    unknown = set(args.only or []) - set(suite)
    if unknown:
        parser.error(f"--only: {sorted(unknown)} not in suite {args.suite} ({', '.join(suite)})")
    started = time.time()
    lines = []
    for name, (script, full, quick) in suite.items():
        if args.only and name not in args.only:
            continue
        path = BENCH_DIR / script
        if not path.is_file():
            lines.append(f"| {name} | missing ({script}) | | |")
            continue
        print(f"== {name}: {script}", flush=True)
        t0 = time.time()
        cmd = [sys.executable, str(path), *(quick if args.quick else full), "--out-dir", str(args.out_dir)]
        proc = subprocess.run(cmd, env=env)
        new = sorted(p.name for p in args.out_dir.glob(f"*_{hardware_slug()}_*") if p.stat().st_mtime >= t0)
        status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        lines.append(f"| {name} | {status} | {time.time() - t0:.0f} | {', '.join(new)} |")
    now = datetime.datetime.now(datetime.timezone.utc)
    label = " (quick run: a smoke test, no figures to compare or judge)" if args.quick else ""
    summary = (
        f"# ltxdist-bench --suite {args.suite}{' --quick' if args.quick else ''}, "
        f"{now:%Y-%m-%d %H:%M} UTC{label}\n\n"
        f"Machine: {hardware_slug()}; total {time.time() - started:.0f} s.\n\n"
        "| benchmark | status | seconds | results files |\n|---|---|---|---|\n" + "\n".join(lines) + "\n"
    )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / f"{results_stem(f'suite-{args.suite}', now, quick=args.quick)}.md"
    write_bytes_atomic(out, summary.encode())
    print(summary)
    print(f"wrote {out}")
    if any("failed" in line for line in lines):
        sys.exit(1)


if __name__ == "__main__":
    main()
