import itertools
from collections import Counter

import pytest
import torch

from ltxdist.data.shards import ShardIndexError, load_index
from ltxdist.data.streaming import CachedLatentStream, ShardReadError, StreamPlan


def _epoch0_ids(directory, world, workers, batch_size=1, split="auto"):
    """Every sample id one pass delivers to each (rank, worker)."""
    index = load_index(directory)
    seen = []
    for rank in range(world):
        for w in range(workers):
            stream = CachedLatentStream(
                directory, StreamPlan(batch_size=batch_size, seed=5, rank=rank, world_size=world, split=split)
            )
            for batch in stream.iter_batches(w, workers):
                if batch["epochs"][0] > 0:
                    break
                seen.extend(batch["ids"])
    return index, seen


@pytest.mark.parametrize("split", ["shard", "sample"])
def test_each_sample_exactly_once_across_2_ranks_x_2_workers(tiny_data, split):
    index, seen = _epoch0_ids(tiny_data, world=2, workers=2, split=split)
    counts = Counter(seen)
    assert len(counts) == index.num_samples
    assert set(counts.values()) == {1}


def test_order_is_deterministic_and_reshuffled_per_epoch(tiny_data):
    def ids(seed):
        s = CachedLatentStream(tiny_data, StreamPlan(batch_size=1, seed=seed))
        return [b["ids"][0] for b in itertools.islice(s.iter_batches(), 48)]

    a, b, c = ids(1), ids(1), ids(2)
    assert a == b and a != c
    assert a[:24] != a[24:48] and sorted(a[:24]) == sorted(a[24:48])


def test_batches_stay_within_one_bucket(tiny_data):
    s = CachedLatentStream(tiny_data, StreamPlan(batch_size=3, seed=0))
    for batch in itertools.islice(s.iter_batches(), 20):
        assert len({m["bucket"] for m in batch["meta"]}) == 1
        assert batch["video_latents"].shape[0] == 3


def test_skip_batches_resumes_exactly(tiny_data):
    plan = StreamPlan(batch_size=2, seed=4)
    full = [b["ids"] for b in itertools.islice(iter(CachedLatentStream(tiny_data, plan)), 30)]
    resumed = [
        b["ids"] for b in itertools.islice(iter(CachedLatentStream(tiny_data, plan, skip_batches=17)), 13)
    ]
    assert resumed == full[17:30]


def test_skip_with_dataloader_workers(tiny_data):
    plan = StreamPlan(batch_size=1, seed=4)

    def run(skip, n):
        loader = torch.utils.data.DataLoader(
            CachedLatentStream(tiny_data, plan, skip_batches=skip), batch_size=None, num_workers=2
        )
        return [b["ids"][0] for b in itertools.islice(loader, n)]

    full = run(0, 20)
    assert run(7, 13) == full[7:20]


def test_truncated_shard_names_the_shard(tiny_data, tmp_path):
    import shutil

    copy = tmp_path / "d"
    shutil.copytree(tiny_data, copy)
    shard = copy / load_index(copy).shards[0]["name"]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 3])
    stream = CachedLatentStream(copy, StreamPlan(batch_size=1, seed=0, split="shard"))
    with pytest.raises((ShardReadError, ValueError), match=shard.name):
        list(itertools.islice(stream.iter_batches(), 30))


def test_missing_index_and_missing_shard(tmp_path, tiny_data):
    import shutil

    with pytest.raises(ShardIndexError, match=r"no index\.json"):
        load_index(tmp_path)
    copy = tmp_path / "d"
    shutil.copytree(tiny_data, copy)
    (copy / load_index(copy).shards[1]["name"]).unlink()
    with pytest.raises(ShardIndexError, match=r"shard-000001\.tar is listed"):
        load_index(copy)
