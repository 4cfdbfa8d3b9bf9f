"""Reading a dataset manifest: `dataset.json`, `.jsonl`, `.csv`, or a folder of clips + `.txt` captions.

Each row keeps its position in the manifest (`index`), and the sample id is derived from it, so a bad
row that is skipped later can never shift another row's caption onto the wrong clip. Structural
problems (unreadable file, unknown column) stop the run before anything is encoded; per-row problems
(missing caption, missing file) are attached to the row and reported when it is processed.
"""

from __future__ import annotations

import csv
import difflib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VIDEO_COLUMNS = ("video_path", "video")
REFERENCE_COLUMNS = ("reference_video", "reference_image", "reference_audio")
KNOWN_COLUMNS = frozenset({*VIDEO_COLUMNS, "caption", *REFERENCE_COLUMNS})
# UTF-8, with or without the byte-order mark that Excel ("CSV UTF-8") and Windows Notepad put first: read
# as plain UTF-8, the mark became part of the first column's name (or caption) or broke the JSON.
TEXT_ENCODING = "utf-8-sig"
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".gif"})


def printable(text: str) -> str:
    """`text` as it can be written as UTF-8 (JSON records, the terminal). A file name that is not UTF-8
    reaches Python with its bad bytes as surrogate escapes (os.fsdecode), which no UTF-8 write accepts:
    they become `\\xNN` (any other lone surrogate `\\uNNNN`). For messages and records; files are opened
    by their real path."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


class ManifestError(ValueError):
    """The manifest as a whole cannot be used; the message names the file and row."""


@dataclass(frozen=True)
class ManifestRow:
    index: int  # 0-based position among the manifest's rows: the sample id comes from it
    where: str  # "dataset.csv row 3" / "clips/a.mp4": used in every message about this row
    video: Path | None
    caption: str | None
    reference_video: Path | None = None
    reference_image: Path | None = None
    reference_audio: Path | None = None
    problem: str | None = None  # set when the row itself is unusable (reported, then skipped)

    @property
    def sample_id(self) -> str:
        # webdataset splits keys at the first '.', so no dots; zero-padded so ids sort in manifest order.
        return f"row{self.index:08d}"


def _suggest(column: str) -> str:
    close = difflib.get_close_matches(column, sorted(KNOWN_COLUMNS), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _path(base: Path, value: Any) -> Path | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    p = Path(str(value).strip()).expanduser()
    return p if p.is_absolute() else base / p


def _lone_surrogate(where: str, column: str, value: Any, *, file_name: bool) -> str | None:
    """The problem with `value` if it holds a lone UTF-16 surrogate, else None.

    JSON can spell one (`"\\ud83d"` without its pair: an emoji cut in two by whatever wrote the
    manifest); UTF-8 text files cannot, so it only comes from a .json / .jsonl manifest. A caption with
    one can be neither tokenized nor stored as UTF-8; a file name with one that is no escaped byte
    (os.fsdecode's \\udc80-\\udcff, which name a non-UTF-8 file) can name no file."""
    if not isinstance(value, str):
        return None
    try:
        os.fsencode(value) if file_name else value.encode("utf-8")
        return None
    except UnicodeEncodeError as exc:
        pos = exc.start
    before = printable(value[max(0, pos - 24) : pos])
    context = f"after '{before}'" if before else "its first character"
    return (
        f"{where}: {column} holds a lone UTF-16 surrogate \\u{ord(value[pos]):04x} at character {pos + 1} "
        f"({context}): half of a character such as an emoji, cut in two when the manifest was written. "
        "Fix that value in the manifest"
    )


def _surrogate_problem(where: str, record: dict[str, Any]) -> str | None:
    for column in (*VIDEO_COLUMNS, "caption", *REFERENCE_COLUMNS):
        problem = _lone_surrogate(where, column, record.get(column), file_name=column != "caption")
        if problem:
            return problem
    return None


def _row(index: int, where: str, base: Path, record: dict[str, Any], source: Path) -> ManifestRow:
    unknown = sorted(set(record) - KNOWN_COLUMNS)
    if unknown:
        raise ManifestError(
            f"{where}: unknown column(s) {', '.join(repr(c) + _suggest(c) for c in unknown)}; known columns "
            f"are {', '.join(sorted(KNOWN_COLUMNS))} ({source})"
        )
    videos = [c for c in VIDEO_COLUMNS if record.get(c) not in (None, "")]
    problem = None
    if len(videos) == 2 and str(record["video_path"]).strip() != str(record["video"]).strip():
        problem = f"{where}: both 'video_path' and 'video' are set and differ; keep one"
    video = _path(base, record[videos[0]]) if videos else None
    if video is None and problem is None:
        problem = f"{where}: no video (set 'video_path' or 'video')"
    caption = record.get("caption")
    caption = None if caption is None else str(caption).strip()
    if not caption and problem is None:
        problem = f"{where}: missing or empty caption"
    problem = problem or _surrogate_problem(where, record)
    return ManifestRow(
        index=index,
        where=where,
        video=video,
        caption=caption or None,
        reference_video=_path(base, record.get("reference_video")),
        reference_image=_path(base, record.get("reference_image")),
        reference_audio=_path(base, record.get("reference_audio")),
        problem=problem,
    )


def _read_json(path: Path) -> list[tuple[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding=TEXT_ENCODING))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nesting
        raise ManifestError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, list):
        raise ManifestError(f"{path}: expected a JSON list of objects, one per clip")
    return [(f"{printable(path.name)} row {i}", rec) for i, rec in enumerate(data)]


def _read_jsonl(path: Path) -> list[tuple[str, Any]]:
    out = []
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((f"{printable(path.name)} line {lineno}", json.loads(line)))
        except (json.JSONDecodeError, RecursionError) as exc:
            raise ManifestError(f"{path} line {lineno}: not valid JSON ({exc})") from exc
    return out


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding=TEXT_ENCODING)
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not UTF-8 text ({exc})") from exc


def _read_csv(path: Path) -> list[tuple[str, Any]]:
    with open(path, newline="", encoding=TEXT_ENCODING) as f:
        try:
            return _csv_rows(path, csv.DictReader(f))
        except (UnicodeDecodeError, csv.Error) as exc:
            raise ManifestError(f"{path}: not a readable UTF-8 CSV file ({exc})") from exc


def _csv_rows(path: Path, reader: csv.DictReader) -> list[tuple[str, Any]]:
    if reader.fieldnames is None:
        raise ManifestError(f"{path}: empty CSV (expected a header with video_path and caption)")
    rows = []
    for rec in reader:
        if None in rec:
            raise ManifestError(f"{path} line {reader.line_num}: more values than header columns")
        # line_num counts physical lines, so a caption with a newline inside quotes still points right.
        rows.append(
            (f"{printable(path.name)} line {reader.line_num}", {k.strip(): v for k, v in rec.items()})
        )
    return rows


def _read_folder(folder: Path) -> list[ManifestRow]:
    clips = sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
    if not clips:
        raise ManifestError(f"{folder}: no video files ({', '.join(sorted(VIDEO_EXTENSIONS))})")
    rows = []
    for i, clip in enumerate(clips):
        sidecar = clip.with_suffix(".txt")
        where = printable(str(clip.relative_to(folder)))
        caption, problem = None, None
        try:
            caption = sidecar.read_text(encoding=TEXT_ENCODING).strip() if sidecar.is_file() else None
        except UnicodeDecodeError as exc:
            problem = f"{where}: caption file {sidecar.name} is not UTF-8 text ({exc})"
        else:
            if caption is None:
                problem = f"{where}: missing caption file {sidecar.name}"
            elif not caption:
                problem = f"{where}: caption file {sidecar.name} is empty"
        rows.append(ManifestRow(index=i, where=where, video=clip, caption=caption or None, problem=problem))
    return rows


def read_manifest(path: str | Path) -> list[ManifestRow]:
    path = Path(path)
    if path.is_dir():
        return _read_folder(path)
    if not path.is_file():
        raise ManifestError(
            f"{path}: manifest not found (give a .json, .jsonl or .csv file, or a folder of clips)"
        )
    readers = {".json": _read_json, ".jsonl": _read_jsonl, ".csv": _read_csv}
    if path.suffix.lower() not in readers:
        raise ManifestError(f"{path}: unsupported manifest type {path.suffix!r}; use .json, .jsonl or .csv")
    records = readers[path.suffix.lower()](path)
    if not records:
        raise ManifestError(f"{path}: the manifest has no rows")
    rows = []
    for i, (where, rec) in enumerate(records):
        if not isinstance(rec, dict):
            raise ManifestError(f"{path}: {where} is not an object with named columns")
        rows.append(_row(i, where, path.parent, rec, path))
    return rows
