import json

import pytest

from ltxdist.data.manifest import ManifestError, read_manifest


def test_json_jsonl_csv_give_the_same_rows(tmp_path):
    records = [
        {"video_path": "a.mp4", "caption": "first"},
        {"video": "sub/b.mp4", "caption": "second", "reference_image": "ref.png"},
    ]
    (tmp_path / "dataset.json").write_text(json.dumps(records))
    (tmp_path / "dataset.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    (tmp_path / "dataset.csv").write_text(
        'video_path,caption,reference_image\na.mp4,first,\nsub/b.mp4,"second",ref.png\n'
    )
    for name in ("dataset.json", "dataset.jsonl", "dataset.csv"):
        rows = read_manifest(tmp_path / name)
        assert [r.index for r in rows] == [0, 1]
        assert [r.video for r in rows] == [
            tmp_path / "a.mp4",
            tmp_path / "sub" / "b.mp4",
        ]  # relative to manifest
        assert [r.caption for r in rows] == ["first", "second"]
        assert rows[0].reference_image is None and rows[1].reference_image == tmp_path / "ref.png"
        assert [r.sample_id for r in rows] == ["row00000000", "row00000001"]
        assert all(r.problem is None for r in rows)


def test_unknown_column_names_the_row_and_suggests(tmp_path):
    (tmp_path / "d.jsonl").write_text(
        '{"video": "a.mp4", "caption": "x"}\n{"video": "b.mp4", "captoin": "y"}\n'
    )
    with pytest.raises(
        ManifestError, match=r"d.jsonl line 2: unknown column\(s\) 'captoin' \(did you mean 'caption'\?\)"
    ):
        read_manifest(tmp_path / "d.jsonl")
    (tmp_path / "d.csv").write_text("video_path,caption,speaker\na.mp4,x,bob\n")
    with pytest.raises(ManifestError, match=r"d.csv line 2: unknown column.*'speaker'"):
        read_manifest(tmp_path / "d.csv")


def test_row_problems_are_kept_per_row(tmp_path):
    (tmp_path / "d.json").write_text(
        json.dumps(
            [
                {"video_path": "a.mp4", "caption": "  "},
                {"caption": "no video"},
                {"video_path": "a.mp4", "video": "b.mp4", "caption": "two videos"},
                {"video_path": "c.mp4", "caption": "fine"},
            ]
        )
    )
    rows = read_manifest(tmp_path / "d.json")
    assert rows[0].problem == "d.json row 0: missing or empty caption"
    assert "no video" in rows[1].problem and "d.json row 1" in rows[1].problem
    assert "both 'video_path' and 'video'" in rows[2].problem
    assert rows[3].problem is None and rows[3].index == 3


def test_folder_with_caption_sidecars(tmp_path):
    for name in ("b.mp4", "a.mov", "c.mp4"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "a.txt").write_text("caption a\n")
    (tmp_path / "b.txt").write_text("")
    rows = read_manifest(tmp_path)
    assert [r.video.name for r in rows] == ["a.mov", "b.mp4", "c.mp4"]
    assert rows[0].caption == "caption a" and rows[0].problem is None
    assert "caption file b.txt is empty" in rows[1].problem
    assert "missing caption file c.txt" in rows[2].problem


def test_structural_errors(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "nope.json")
    (tmp_path / "d.json").write_text("{not json")
    with pytest.raises(ManifestError, match=r"d.json: not valid JSON"):
        read_manifest(tmp_path / "d.json")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(ManifestError, match="unsupported manifest type"):
        read_manifest(tmp_path / "d.txt")
    (tmp_path / "e.json").write_text("[]")
    with pytest.raises(ManifestError, match="no rows"):
        read_manifest(tmp_path / "e.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="no video files"):
        read_manifest(tmp_path / "empty")


def test_a_byte_order_mark_is_ignored(tmp_path):
    """Excel's "CSV UTF-8" and Windows Notepad start the file with a UTF-8 byte-order mark: it became
    part of the first column's name ("unknown column '\\ufeffvideo_path'") or broke the JSON."""
    records = [{"video_path": "a.mp4", "caption": "first"}, {"video_path": "b.mp4", "caption": "second"}]
    texts = {
        "d.json": json.dumps(records),
        "d.jsonl": "\n".join(json.dumps(r) for r in records),
        "d.csv": "video_path,caption\na.mp4,first\nb.mp4,second\n",
    }
    for name, text in texts.items():
        (tmp_path / name).write_text(text, encoding="utf-8-sig")
        rows = read_manifest(tmp_path / name)
        assert [(r.video, r.caption, r.problem) for r in rows] == [
            (tmp_path / "a.mp4", "first", None),
            (tmp_path / "b.mp4", "second", None),
        ], name
    folder = tmp_path / "clips"
    folder.mkdir()
    (folder / "a.mp4").write_bytes(b"")
    (folder / "a.txt").write_text("a caption from Notepad", encoding="utf-8-sig")
    assert read_manifest(folder)[0].caption == "a caption from Notepad"
