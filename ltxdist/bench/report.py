"""Results files of a benchmark: `<results dir>/<name>_<hardware>_<date>.json` and a markdown report
with the table, the full config, library versions and the hardware it ran on.

The results directory is `benchmarks/results` of the ltxdist checkout the command runs in, or
`runs/bench` outside one (never the installed package's own folder). A quick (smoke) run, marked by
`ltxdist-bench --quick` through the LTXDIST_BENCH_QUICK environment variable, is labelled in the file
name (`<name>-quick_...`) and the report, and judges no target: too few repeats to mean anything."""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ltxdist.io import write_bytes_atomic, write_json_atomic

RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"  # this package's source tree
QUICK_ENV = "LTXDIST_BENCH_QUICK"
QUICK_NOTE = (
    "**Quick (smoke) run**: a few steps and repeats to check that the benchmark runs; its numbers judge "
    "no target. Run without --quick for figures."
)
_PACKAGES = (
    "torch",
    "lightning",
    "ltx-core",
    "deepspeed",
    "triton",
    "webdataset",
    "safetensors",
    "peft",
    "ltxdist",
)


def checkout_root(start: Path | None = None) -> Path | None:
    """The ltxdist checkout containing `start` (default: the current directory), if any."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        project = folder / "pyproject.toml"
        if not ((folder / "benchmarks").is_dir() and project.is_file()):
            continue
        if 'name = "ltxdist"' in project.read_text():
            return folder
    return None


def default_results_dir() -> Path:
    """benchmarks/results of the current checkout, or runs/bench (relative to here) outside one."""
    root = checkout_root()
    return root / "benchmarks" / "results" if root is not None else Path("runs") / "bench"


def quick_run() -> bool:
    return os.environ.get(QUICK_ENV, "") not in ("", "0")


def results_stem(name: str, when: datetime.datetime, quick: bool | None = None) -> str:
    """`<name>_<hardware>_<date>`, with `-quick` after the name for a quick run (default: this process's)."""
    quick = quick_run() if quick is None else quick
    return f"{name}{'-quick' if quick else ''}_{hardware_slug()}_{when:%Y-%m-%d}"


def target_verdict(met: bool, yes: str = "MET", no: str = "NOT MET") -> str:
    """The verdict on a target, or none for a quick run."""
    if quick_run():
        return "not judged: quick run"
    return yes if met else no


def time_repeats(fn: Callable[[], object], *, warmup: int, repeats: int) -> list[float]:
    """Wall-clock seconds of `repeats` calls of `fn` after `warmup` untimed calls (CPU work: for CUDA
    work, synchronise inside `fn`)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def load_average() -> float:
    """1-minute load average of the machine: other processes competing for the cores skew timings."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return float("nan")


def summarize(samples_s: list[float]) -> dict[str, float]:
    """Median and spread of repeated timings (seconds)."""
    ordered = sorted(samples_s)
    q = statistics.quantiles(ordered, n=4) if len(ordered) >= 2 else [ordered[0]] * 3
    return {
        "median_s": statistics.median(ordered),
        "p25_s": q[0],
        "p75_s": q[2],
        "min_s": ordered[0],
        "max_s": ordered[-1],
        "repeats": len(ordered),
    }


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "load_avg_1m_at_write": load_average(),
    }
    with contextlib.suppress(ValueError, OSError):
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return info


def hardware_slug() -> str:
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0).lower()
        for key in ("h200", "h100", "a100", "l40", "4090"):
            if key in name:
                return f"{torch.cuda.device_count()}x{key}"
        return "gpu"
    return f"cpu{os.cpu_count()}"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in _PACKAGES:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            continue
    with contextlib.suppress(OSError):
        out["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=RESULTS_DIR.parent,
            check=False,
        ).stdout.strip()
    return out


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def portable_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config as recorded in a results file, without the machine's folders: paths inside the
    repository relative to its root, other absolute paths (a scratch folder) as `<local>/` + their name."""
    root = RESULTS_DIR.parents[1]

    def portable(value: Any) -> Any:
        if isinstance(value, (str, Path)) and Path(value).is_absolute():
            with contextlib.suppress(ValueError):
                return str(Path(value).resolve().relative_to(root))
            return f"<local>/{Path(value).name}"
        return value

    return {k: portable(v) for k, v in config.items()}


def write_results(
    name: str,
    rows: list[dict[str, Any]],
    columns: list[str],
    config: dict[str, Any],
    notes: str = "",
    out_dir: Path | None = None,
    tables: dict[str, tuple[list[dict[str, Any]], list[str]]] | None = None,
) -> tuple[Path, Path]:
    """Print the table(s) and write the JSON + dated markdown report; returns their paths.

    `tables` adds titled tables after the main one (title -> (rows, columns)); their rows go to the JSON
    under `tables`.
    """
    out_dir = out_dir or default_results_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    stem = results_stem(name, now)
    if quick_run():
        notes = f"{QUICK_NOTE}\n\n{notes}"
    tables = tables or {}
    config = portable_config(config)
    table = markdown_table(rows, columns)
    extra = "".join(f"\n\n## {title}\n\n{markdown_table(r, c)}" for title, (r, c) in tables.items())
    print(table + extra)
    payload = {
        "benchmark": name,
        "quick": quick_run(),
        "date_utc": now.isoformat(timespec="seconds"),
        "hardware": hardware(),
        "versions": versions(),
        "config": config,
        "rows": rows,
        "tables": {title: r for title, (r, _) in tables.items()},
        "notes": notes,
    }
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    title = f"{name} benchmark{' (quick run)' if quick_run() else ''}"
    write_json_atomic(json_path, json.loads(json.dumps(payload, default=str)))
    md = (
        f"# {title}, {now:%Y-%m-%d %H:%M} UTC\n\n{notes}\n\n{table}{extra}\n\n## Hardware\n\n"
        f"```json\n{json.dumps(payload['hardware'], indent=2)}\n```\n\n## Versions\n\n```json\n"
        f"{json.dumps(payload['versions'], indent=2)}\n```\n\n## Config\n\n```json\n"
        f"{json.dumps(config, indent=2, default=str)}\n```\n"
    )
    write_bytes_atomic(md_path, md.encode())
    print(f"wrote {json_path}\nwrote {md_path}")
    return json_path, md_path
