import itertools
import json
from collections import Counter

import pytest
import torch

from ltxdist.data.shards import ShardIndexError, load_index
from ltxdist.data.streaming import CURSOR_KEY, CachedLatentStream, ShardReadError, StreamPlan


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


# -- resuming from cursors (data/cursor.py) --------------------------------------------------------
def _ids(batches):
    return [(list(b["ids"]), list(b["epochs"])) for b in batches]


def test_saved_cursors_resume_exactly_with_buckets_carry_over_epochs_and_workers(tiny_data):
    """What training does: keep each worker role's cursor from the batches consumed, save them as JSON;
    a new loader given them continues with exactly the uninterrupted batches. Two buckets with batch 2
    leave partial batches that carry into the next epoch; rank 1 of 2 with 2 workers."""
    plan = StreamPlan(batch_size=2, seed=3, rank=1, world_size=2, shuffle_buffer=4, split="shard")

    def loader(**resume):
        stream = CachedLatentStream(tiny_data, plan, **resume)
        return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)

    full = _ids(itertools.islice(loader(), 16))
    cursors = [None, None]
    for batch in itertools.islice(loader(), 5):
        cursors[batch[CURSOR_KEY]["role"]] = batch[CURSOR_KEY]["cursor"]
    saved = json.loads(json.dumps(cursors))  # as the checkpoint stores them
    # Role 0 stands in epoch 1 with a sample of epoch 0 waiting for its batch (carried over).
    assert saved[0]["epoch"] == 1 and [p[-1] for p in saved[0]["pending"]] == [0]
    assert _ids(itertools.islice(loader(skip_batches=5, cursors=saved), 11)) == full[5:16]


def test_a_cursor_rereads_only_the_samples_it_holds(tiny_data, monkeypatch):
    """Seeking costs the samples waiting in the shuffle buffer and partial batches, whatever came before;
    finding the cursor for a position without one reads no sample at all (headers only)."""
    import ltxdist.data.cursor as cursor_module

    plan = StreamPlan(batch_size=2, seed=3, shuffle_buffer=4, split="shard")
    stream = CachedLatentStream(tiny_data, plan)
    full = list(itertools.islice(stream.iter_batches(), 30))  # 2.5 epochs
    cursor = json.loads(json.dumps(full[24][CURSOR_KEY]["cursor"]))
    decoded = []
    real = cursor_module.decode_sample
    monkeypatch.setattr(
        cursor_module,
        "decode_sample",
        lambda record, where="": decoded.append(1) or real(record, where=where),
    )
    assert stream.cursors_after(25, 1) == [cursor] and not decoded  # JSON-equal, nothing decoded
    held = len(cursor["buffer"]) + len(cursor["pending"])
    assert 0 < held <= 4 + 2 * (2 - 1)  # shuffle buffer + one short of a batch per bucket
    resumed = cursor_module.ConsumerStream.restore(tiny_data, stream.index, plan, 0, 1, cursor)
    assert len(decoded) == held  # a replay would decode the 50 samples of batches 0..24 first
    assert [i.sample.key for i in resumed.next_batch()] == full[25]["ids"]


def test_a_shard_rewritten_since_the_checkpoint_is_named(tiny_data, tmp_path):
    import shutil

    from ltxdist.data.sample import decode_sample
    from ltxdist.data.shards import read_shard_records, write_shard

    copy = tmp_path / "d"
    shutil.copytree(tiny_data, copy)
    plan = StreamPlan(batch_size=1, seed=3, shuffle_buffer=4, split="shard")
    stream = CachedLatentStream(copy, plan)
    cursor = next(itertools.islice(stream.iter_batches(), 2, None))[CURSOR_KEY]["cursor"]
    shard = copy / stream.index.shards[cursor["buffer"][0][0]]["name"]
    samples = [decode_sample(r) for r in read_shard_records(shard)]
    write_shard(shard, samples[::-1])  # same samples and size, other byte offsets
    with pytest.raises(ShardReadError, match=rf"{shard.name}: .* rewritten since the checkpoint"):
        next(CachedLatentStream(copy, plan, skip_batches=3, cursors=[cursor]).iter_batches(0, 1, cursor))
