"""benchmarks/fullsize_bench.py on the tiny preset, on CPU: its random-weights path (build on meta, fill on
the device, inject/strip ltxdist LoRA and PEFT in turn, kernels patched/unpatched, activation
checkpointing) runs for one step per variant and writes its results, so the first GPU call of the
full-size run does not fail on a trivial bug."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCH_DIR))  # as when run as a script: baseline_trainer beside it
    spec = importlib.util.spec_from_file_location("fullsize_bench", BENCH_DIR / "fullsize_bench.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "fullsize_bench", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def one_thread():
    # Tiny ops on 2 intra-op threads stall on a busy 2-core machine (ms per Linear); one thread does not.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tiny_random_weights_run_of_every_trainer_and_workload(tmp_path, monkeypatch, one_thread):
    bench = _load(monkeypatch)
    argv = ["--preset", "tiny", "--device", "cpu", "--dtype", "float32", "--ranks", "4", "--ac", "on"]
    argv += ["--kernels", "auto", "on", "off"]
    argv += ["--standard-bucket", "64x64x9", "--ic-bucket", "64x64x9", "--text-tokens", "8"]
    argv += ["--warmup", "0", "--steps", "1", "--kernels-on-backend", "torch", "--out-dir", str(tmp_path)]
    json_path, md_path = bench.main(argv)
    payload = json.loads(json_path.read_text())
    rows = {(r["workload"], r["trainer"]): r for r in payload["rows"]}
    trainers = {"ltxdist kernels auto", "ltxdist kernels on", "ltxdist kernels off", "peft"}
    assert set(rows) == {(w, t) for w in ("standard", "ic_lora") for t in trainers}
    assert all(r["status"] == "ok" and r["step_ms"] > 0 for r in rows.values()), rows
    # 64x64x9 -> 2x2x2 latent grid: 8 video tokens; standard adds 9 audio latent frames (9 frames at
    # 24 fps, 25 per second), IC-LoRA a same-size reference instead.
    for (work, _), r in rows.items():
        tokens = 8 + 9 if work == "standard" else 2 * 8
        assert r["tokens_per_s"] * r["step_ms"] / 1e3 == pytest.approx(tokens, rel=1e-3)
        assert r["mfu"] == ""  # no known peak on a CPU: MFU is left out, not made up
    for (_, trainer), r in rows.items():  # the activation memory model's prediction beside each peak
        assert (r.get("predicted_peak_gib", 0) > 0) == trainer.startswith("ltxdist"), r
    ratios = payload["tables"]["ltxdist vs PEFT (step time ratio, > 1: ltxdist faster)"]
    assert len(ratios) == 6
    for ratio in ratios:
        ours = rows[(ratio["workload"], ratio["ltxdist"])]["step_ms"]
        theirs = rows[(ratio["workload"], "peft")]["step_ms"]
        assert ratio["speedup_vs_peft"] == pytest.approx(theirs / ours)
    assert "| ic_lora | 4 | peft | on | ok |" in md_path.read_text()
