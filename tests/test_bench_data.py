"""The streaming hand-off the data benchmark measures (one packed storage per batch, small batches piped
out of DataLoader workers as bytes) and a quick run of benchmarks/data_bench.py itself."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import ltxdist.data.collate as collate
from ltxdist.data.sample import CachedSample
from ltxdist.data.streaming import CachedLatentStream, StreamPlan

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "data_bench.py"


def _sample(i: int, audio_t: int, gen: torch.Generator) -> CachedSample:
    tensors = {
        "video_latents": torch.randn(128, 2, 3, 4, generator=gen).to(torch.bfloat16),
        "audio_latents": torch.randn(8, audio_t, 16, generator=gen).to(torch.bfloat16),
        "video_context": torch.randn(5, 12, generator=gen),
        "audio_context": torch.randn(5, 6, generator=gen),
        "context_mask": torch.tensor([1, 1, 1, 0, 1], dtype=torch.bool),
    }
    return CachedSample(tensors, {"id": f"s{i}", "bucket": "b", "fps": 24.0 + i, "caption": f"c{i}"})


def test_packed_collate_matches_stack_and_pad_in_one_storage():
    gen = torch.Generator().manual_seed(0)
    samples = [_sample(0, 7, gen), _sample(1, 5, gen), _sample(2, 7, gen)]
    batch = collate.collate_samples(samples)
    for name in ("video_latents", "video_context", "audio_context", "context_mask"):
        want = torch.stack([s.tensors[name] for s in samples])
        assert batch[name].dtype == want.dtype and torch.equal(batch[name], want), name
    audio = [s.tensors["audio_latents"] for s in samples]
    want_audio = torch.stack([F.pad(a, (0, 0, 0, 7 - a.shape[1])) for a in audio])
    assert torch.equal(batch["audio_latents"], want_audio)
    assert batch["audio_lengths"].tolist() == [7, 5, 7] and batch["audio_padded"] is True
    assert batch["fps"].tolist() == [24.0, 25.0, 26.0]
    tensors = [v for v in batch.values() if isinstance(v, torch.Tensor)]
    assert len({t.untyped_storage().data_ptr() for t in tensors}) == 1  # one hand-off per batch
    assert all(t.is_contiguous() and t.data_ptr() % 64 == 0 for t in tensors)


@pytest.mark.parametrize("pipe_max_bytes", [collate.PIPE_MAX_BYTES, 0], ids=["pipe", "shared-memory"])
def test_batches_from_a_worker_equal_the_in_process_batches(tiny_data, monkeypatch, pipe_max_bytes):
    monkeypatch.setattr(collate, "PIPE_MAX_BYTES", pipe_max_bytes)  # workers are forked: they see it
    plan = StreamPlan(batch_size=2, seed=3)
    local = list(itertools.islice(CachedLatentStream(tiny_data, plan).iter_batches(), 6))
    loader = torch.utils.data.DataLoader(CachedLatentStream(tiny_data, plan), batch_size=None, num_workers=1)
    remote = list(itertools.islice(loader, 6))
    assert all(type(b) is dict for b in remote)
    for want, got in zip(local, remote, strict=True):
        assert want.keys() == got.keys()
        for key, value in want.items():
            if isinstance(value, torch.Tensor):
                assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
            else:
                assert got[key] == value, key


def _load_bench(monkeypatch: pytest.MonkeyPatch):
    spec = importlib.util.spec_from_file_location("data_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "data_bench", module)
    spec.loader.exec_module(module)
    return module


def test_quick_data_bench_writes_rates_ratio_and_first_batch_times(tmp_path, monkeypatch):
    bench = _load_bench(monkeypatch)
    argv = ["--num-samples", "96", "--small-samples", "32", "--samples-per-shard", "16", "--distinct", "4"]
    argv += ["--bucket", "64x64x9", "--text-tokens", "8", "--chunks", "2", "--first-batch-repeats", "1"]
    argv += ["--cache", "warm", "--breakdown-samples", "16", "--out-dir", str(tmp_path)]
    json_path, md_path = bench.main(argv)
    payload = json.loads(json_path.read_text())
    rows = {r["layout"]: r for r in payload["rows"]}
    assert set(rows) == {"shards", "per_file"}
    for r in rows.values():
        assert r["samples_per_s"] > 0 and r["cpu_ms_per_sample"] > 0 and len(r["chunk_rates"]) == 2
    ratio = rows["shards"]["samples_per_s"] / rows["per_file"]["samples_per_s"]
    assert rows["shards"]["shards_over_per_file"] == pytest.approx(ratio)
    verdict = "MET" if ratio >= 3 else "NOT MET"
    assert f"warm: {ratio:.2f}x ({verdict})" in payload["notes"]
    first = payload["tables"]["Time to first batch (cold cache)"]
    assert {(r["layout"], r["samples"]) for r in first} == {(la, n) for la in rows for n in (32, 96)}
    assert "## Time to first batch (cold cache)" in md_path.read_text()
    (stages,) = [rows for title, rows in payload["tables"].items() if title.startswith("Where the time goes")]
    assert [r["layout"] for r in stages] == ["shards"] * 5 + ["per_file"] * 3
    assert all(r["cpu_ms_per_sample"] > 0 for r in stages)


def test_results_files_record_repository_relative_paths(tmp_path):
    from ltxdist.bench.report import RESULTS_DIR, write_results

    json_path, md_path = write_results(
        "paths",
        [{"x": 1}],
        ["x"],
        {"out_dir": str(RESULTS_DIR), "work": tmp_path / "w", "steps": 3},
        out_dir=tmp_path,
    )
    config = json.loads(json_path.read_text())["config"]
    assert config["out_dir"] == "benchmarks/results"  # inside the checkout: relative to its root
    # elsewhere (a scratch folder): by name only, no machine path; not a path: as given
    assert config["work"] == "<local>/w" and config["steps"] == 3
    assert str(RESULTS_DIR) not in md_path.read_text() and str(tmp_path) not in md_path.read_text()


def test_bench_writes_where_it_is_run_and_labels_quick_runs(tmp_path, monkeypatch, capsys):
    """Issue 24, case 6: ltxdist-bench wrote into the installed package's source tree, a --quick run used
    the file names of a full run of the same day and printed "1.18x (MET)" from 3 timed steps. Now the
    default is benchmarks/results of the checkout one is in (runs/bench outside one), and quick runs are
    labelled in file names and reports and judge no target."""
    from ltxdist.bench import cli
    from ltxdist.bench.report import checkout_root, default_results_dir

    assert default_results_dir() == Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    assert checkout_root(Path(__file__).parent) == Path(__file__).resolve().parents[1]
    script = tmp_path / "echo_bench.py"  # a stand-in benchmark script: the runner's contract only
    script.write_text(
        "import sys\nfrom pathlib import Path\n"
        "from ltxdist.bench.report import target_verdict, write_results\n"
        "out = Path(sys.argv[sys.argv.index('--out-dir') + 1])\n"
        "write_results('echo', [{'x': 1}], ['x'], {}, notes=f'2.00x ({target_verdict(True)})', out_dir=out)\n"
    )
    monkeypatch.setitem(cli.SUITES, "cpu", {"echo": (str(script), [], [])})
    elsewhere = tmp_path / "not_a_checkout"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cli.main(["--suite", "cpu", "--quick"])
    written = sorted(p.name for p in (elsewhere / "runs" / "bench").iterdir())
    assert [n.split("_")[0] for n in written] == ["echo-quick", "echo-quick", "suite-cpu-quick"], written
    report = next((elsewhere / "runs" / "bench").glob("echo-quick_*.md")).read_text()
    assert report.startswith("# echo benchmark (quick run)") and "2.00x (not judged: quick run)" in report
    assert "MET" not in capsys.readouterr().out + report
    from ltxdist.bench.report import QUICK_ENV, target_verdict

    assert QUICK_ENV not in os.environ and target_verdict(True) == "MET"  # a full run judges
