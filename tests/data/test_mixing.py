import gc
import itertools
import json
import warnings
from collections import Counter

import pytest
import torch

from ltxdist.data.mixing import MixedLatentStream, MixSource
from ltxdist.data.streaming import CURSOR_KEY, CachedLatentStream, StreamPlan
from ltxdist.data.synthetic import write_synthetic_dataset
from ltxdist.models.tiny_checkpoint import write_random_checkpoint


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory, tiny_model):
    """Two characters' datasets; different buckets make each batch's origin visible in its shapes."""
    root = tmp_path_factory.mktemp("mix")
    write_synthetic_dataset(
        root / "alice", tiny_model.checkpoint, num_samples=12, samples_per_shard=3, buckets=("64x64x17",)
    )
    write_synthetic_dataset(
        root / "bob", tiny_model.checkpoint, num_samples=8, samples_per_shard=2, buckets=("96x64x9",)
    )
    return [MixSource("alice", root / "alice", 3.0), MixSource("bob", root / "bob", 1.0)]


def _ids(batches):
    return [(b["source"], tuple(b["ids"]), b["epochs"][0]) for b in batches]


def test_choice_frequencies_follow_weights(two_sets):
    stream = MixedLatentStream(two_sets, StreamPlan(batch_size=1, seed=0))
    counts = Counter(itertools.islice(stream.choices(role=0), 4000))
    assert abs(counts[0] / 4000 - 0.75) < 0.03 and abs(counts[1] / 4000 - 0.25) < 0.03
    other_seed = MixedLatentStream(two_sets, StreamPlan(batch_size=1, seed=1))
    assert list(itertools.islice(stream.choices(0), 50)) != list(itertools.islice(other_seed.choices(0), 50))


def test_batches_come_whole_from_one_source_and_bucket(two_sets):
    stream = MixedLatentStream(two_sets, StreamPlan(batch_size=2, seed=3))
    seen = Counter()
    for batch in itertools.islice(iter(stream), 40):
        buckets = {m["bucket"] for m in batch["meta"]}
        assert buckets == ({"64x64x17"} if batch["source"] == "alice" else {"96x64x9"})
        seen[batch["source"]] += 1
    assert seen["alice"] > seen["bob"] > 0


def test_skip_batches_resumes_exactly(two_sets):
    plan = StreamPlan(batch_size=2, seed=5)
    full = _ids(itertools.islice(iter(MixedLatentStream(two_sets, plan)), 30))
    resumed = _ids(itertools.islice(iter(MixedLatentStream(two_sets, plan, skip_batches=13)), 17))
    assert resumed == full[13:30]


def test_resume_with_two_dataloader_workers(two_sets):
    plan = StreamPlan(batch_size=1, seed=2)

    def run(skip, n):
        loader = torch.utils.data.DataLoader(
            MixedLatentStream(two_sets, plan, skip_batches=skip), batch_size=None, num_workers=2
        )
        return _ids(itertools.islice(loader, n))

    full = run(0, 14)
    assert run(5, 9) == full[5:14]


def test_saved_cursors_resume_exactly_with_two_dataloader_workers(two_sets):
    """Each worker role's cursor (choice generator + each source's stream), saved as JSON, resumes the
    mixed stream where an uninterrupted one goes on."""
    plan = StreamPlan(batch_size=2, seed=4, shuffle_buffer=3)

    def loader(**resume):
        stream = MixedLatentStream(two_sets, plan, **resume)
        return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)

    full = _ids(itertools.islice(loader(), 16))
    cursors = [None, None]
    for batch in itertools.islice(loader(), 7):
        cursors[batch[CURSOR_KEY]["role"]] = batch[CURSOR_KEY]["cursor"]
    saved = json.loads(json.dumps(cursors))
    assert all(c["sources"][0] and c["sources"][1] for c in saved), "both sources under way in each role"
    assert _ids(itertools.islice(loader(skip_batches=7, cursors=saved), 9)) == full[7:16]
    # Without cursors (another layout), the choices replay and each source fast-forwards: same batches.
    assert json.loads(json.dumps(MixedLatentStream(two_sets, plan).cursors_after(7, 2))) == saved


def test_fast_forward_and_abandoned_streams_close_their_shards(two_sets):
    """A mixed stream's fast-forward (a resume without cursors) left every source's shard it stopped in
    open for the garbage collector (one ResourceWarning "unclosed file" each), and so did a batch
    generator closed before its end (mixed or single). They close their files themselves now."""
    plan = StreamPlan(batch_size=2, seed=5, shuffle_buffer=1)  # a buffer of 1: reading stops mid-shard

    def first_batch_then_close(stream):
        batches = stream.iter_batches(0, 1, None)
        next(batches)
        batches.close()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        cursors = MixedLatentStream(two_sets, plan).cursors_after(7, 2)
        first_batch_then_close(MixedLatentStream(two_sets, plan))
        first_batch_then_close(CachedLatentStream(two_sets[0].directory, plan))
        gc.collect()
    # Each role stopped inside a shard of each source it read: files were open when it stopped.
    assert all(c is not None and any(s and s["offset"] > 0 for s in c["sources"]) for c in cursors)
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_bad_sources_are_refused(tmp_path, two_sets, tiny_model):
    plan = StreamPlan(batch_size=1, seed=0)
    with pytest.raises(ValueError, match=r"'bob' .*weight must be > 0"):
        MixedLatentStream([two_sets[0], MixSource("bob", two_sets[1].directory, 0.0)], plan)
    with pytest.raises(ValueError, match="unique"):
        MixedLatentStream([two_sets[0], two_sets[0]], plan)
    write_synthetic_dataset(
        tmp_path / "other", tiny_model.checkpoint, num_samples=2, samples_per_shard=2, seed=9
    )
    with pytest.raises(ValueError, match=r"'carol' .*different encoders"):
        MixedLatentStream([two_sets[0], MixSource("carol", tmp_path / "other")], plan)
    newer = write_random_checkpoint(tmp_path / "newer.safetensors", model_version="2.4.0")
    write_synthetic_dataset(tmp_path / "newer", newer, num_samples=2, samples_per_shard=2)
    with pytest.raises(ValueError, match=r"'dave' .*model version 2.4.0"):
        MixedLatentStream([two_sets[0], MixSource("dave", tmp_path / "newer")], plan)
