"""`ltxdist-bench --suite cpu --only step --quick` into tmp_path: both trainers (ltxdist and the
ltx-core + PEFT baseline) really run, and the results files carry their step times, start-up times and
the ratio. A missing baseline dependency (PEFT) or a broken trainer fails here."""

from __future__ import annotations

import json

import pytest

from ltxdist.bench.cli import main as bench_main
from ltxdist.bench.report import hardware_slug


@pytest.mark.slow
def test_quick_step_suite_runs_both_trainers_and_writes_the_ratio(tmp_path):
    bench_main(["--suite", "cpu", "--only", "step", "--quick", "--out-dir", str(tmp_path)])
    # --quick: labelled in the file names (never mistaken for a full run's results of the same day)
    (json_file,) = tmp_path.glob(f"step-quick_{hardware_slug()}_*.json")
    (md_file,) = tmp_path.glob(f"step-quick_{hardware_slug()}_*.md")
    (summary,) = tmp_path.glob(f"suite-cpu-quick_{hardware_slug()}_*.md")
    payload = json.loads(json_file.read_text())
    (row,) = payload["rows"]
    assert row["preset"] == "tiny"
    for key in ("ltxdist_step_ms", "baseline_step_ms", "ltxdist_startup_s", "baseline_startup_s"):
        assert row[key] > 0, key
    assert row["speedup_vs_baseline"] == pytest.approx(row["baseline_step_ms"] / row["ltxdist_step_ms"])
    assert row["steps_timed"] == 3  # --quick: 3 timed steps after 1 warm-up step
    assert "peft" in payload["versions"]  # the baseline's library is recorded with the other versions
    assert "speedup_vs_baseline" in md_file.read_text()
    assert payload["quick"] and "not judged: quick run" in payload["notes"] and "MET" not in payload["notes"]
    assert "| step | ok |" in summary.read_text()
