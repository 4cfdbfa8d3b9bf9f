"""A shard that disappears mid-epoch: a ShardReadError naming it, and once it is back the stream resumed
at the data position continues exactly where an uninterrupted one would (nothing lost or repeated).
The same fault inside a training run is in the soak (test_soak.py)."""

from __future__ import annotations

import shutil

import pytest
from fault_helpers import stream_ids

from ltxdist.data.shards import load_index
from ltxdist.data.streaming import CachedLatentStream, ShardReadError, StreamPlan


def test_vanished_shard_is_named_and_the_resumed_stream_loses_nothing(data_copy, tmp_path):
    plan = StreamPlan(batch_size=1, seed=0, shuffle_buffer=4)
    want = stream_ids(data_copy, 24)  # one and a half epochs of 16 samples, uninterrupted
    batches = iter(CachedLatentStream(data_copy, plan))
    consumed = [next(batches)["ids"]]  # the first shard is open (read ahead into the shuffle buffer)
    # Every shard but the open one disappears; the reader meets the loss when it moves on.
    moved = tmp_path / "moved"
    moved.mkdir()
    gone = [
        data_copy / s["name"]
        for s in load_index(data_copy).shards
        if consumed[0][0] not in _ids(data_copy / s["name"])
    ]
    for shard in gone:
        shutil.move(shard, moved / shard.name)
    with pytest.raises(ShardReadError) as info:
        while True:
            consumed.append(next(batches)["ids"])
    assert any(str(g) in str(info.value) for g in gone), str(info.value)
    assert "removed" in str(info.value)
    for shard in gone:  # restored
        shutil.move(moved / shard.name, shard)
    # Resume at the last batch the trainer actually got: the continuation is the uninterrupted one.
    resumed = iter(CachedLatentStream(data_copy, plan, skip_batches=len(consumed)))
    rest = [next(resumed)["ids"] for _ in range(len(want) - len(consumed))]
    assert consumed + rest == want
    first_epoch = [i for ids in want[:16] for i in ids]
    assert sorted(first_epoch) == sorted(set(first_epoch)) and len(first_epoch) == 16


def _ids(shard) -> set[str]:
    from ltxdist.data.shards import read_shard_records

    return {r["__key__"] for r in read_shard_records(shard)}
