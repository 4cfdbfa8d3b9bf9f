"""ltxdist-prepare over a manifest of what real datasets hold: captions in any script, an empty one, a
very long one; truncated, frameless, audio-only, oversized and missing media. Good rows become samples
exactly once with their own captions, every bad row is skipped with a reason naming the row and the
file, nothing partial is left, and a rerun finds everything done."""

from __future__ import annotations

import json

from fault_helpers import partial_files, png_header

from ltxdist.data.buckets import parse_buckets
from ltxdist.data.prepare import PrepareOptions, SampleSpec, prepare_dataset
from ltxdist.data.prepare.demo import CONCEPTS, make_clip
from ltxdist.data.sample import decode_sample
from ltxdist.data.shards import load_index, read_shard_records

UNICODE = "Ünïcödé 日本語のキャプション 🎬 — שלום, \u200bzero-width and combining a\u0301"
LONG = "a slow pan over a quiet harbour at dawn, " * 500  # ~20k characters: far past the text tokens


def test_prepare_skips_bad_rows_naming_them_and_keeps_good_captions(tmp_path, tiny_encoders_model, media):
    ckpt, gemma = tiny_encoders_model
    raw = tmp_path / "raw"
    raw.mkdir()
    good = make_clip(raw / "good.mp4", CONCEPTS[0], 64, 64, 17, 24.0, seed=2)
    (raw / "truncated.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    for name in ("zero.mkv", "tone.wav"):
        (raw / name).write_bytes(media[name])
    (raw / "huge.png").write_bytes(png_header(12000, 12000))
    rows = [
        ("good.mp4", UNICODE),
        ("good.mp4", LONG),
        ("good.mp4", "   "),
        ("truncated.mp4", "cut in the middle"),
        ("zero.mkv", "no frames at all"),
        ("tone.wav", "sound only"),
        ("huge.png", "a header claiming 12000x12000"),
        ("gone.mp4", "never existed"),
    ]
    manifest = raw / "dataset.jsonl"
    manifest.write_text(
        "\n".join(json.dumps({"video": v, "caption": c}, ensure_ascii=False) for v, c in rows)
    )
    opts = PrepareOptions(
        input=manifest,
        out=tmp_path / "out",
        checkpoint=ckpt,
        gemma=gemma,
        spec=SampleSpec(buckets=tuple(parse_buckets("64x64x17")), audio="optional"),
        samples_per_shard=3,
        device="cpu",
        dtype="fp32",
        progress=False,
    )
    result = prepare_dataset(opts)
    assert result.complete

    samples = {}
    for shard in load_index(opts.out).shards:
        for record in read_shard_records(opts.out / shard["name"]):
            sample = decode_sample(record)
            assert sample.key not in samples, f"{sample.key} written twice"
            samples[sample.key] = sample
    assert sorted(samples) == ["row00000000", "row00000001"]
    assert samples["row00000000"].meta["caption"] == UNICODE  # byte for byte, not escaped or cut
    assert samples["row00000001"].meta["caption"] == LONG.strip()

    reasons = {s["row"]: s["reason"] for s in result.skipped}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7]
    for row, reason in reasons.items():
        assert f"dataset.jsonl line {row + 1}" in reason, reason
        if row >= 3:
            assert rows[row][0] in reason, reason
    assert "empty caption" in reasons[2]
    assert "no decodable video frames" in reasons[4]
    assert "no video stream" in reasons[5]
    assert "exceeds 8192 pixels per side" in reasons[6]
    assert "not found" in reasons[7]
    assert partial_files(tmp_path) == []
    again = prepare_dataset(opts)
    assert again.encoded == 0 and again.complete
