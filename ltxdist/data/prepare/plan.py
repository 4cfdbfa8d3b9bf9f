"""Which shards of an ltxdist-prepare output are up to date, keyed by what each one holds.

Work is cut into fixed units of `samples_per_shard` consecutive manifest rows; unit u becomes
`shard-{u:06d}.tar` plus its record `shard-{u:06d}.unit.json`. A record keeps what the shard was made
from: the model version and encoder fingerprints, the preparation options, and a digest of its own rows
(every manifest field plus the size and modification time of each file the row names). So:

- a fixed or appended row changes only its unit's digest: that unit alone is encoded again (a folder's
  rows are its clips in sorted path order: a clip inserted before others shifts them all, and every
  unit from there on changes);
- other encoders, another model version or other options change every unit: refused unless
  `--overwrite` (a whole-dataset re-encode must be asked for), which then replaces exactly the units
  whose inputs changed and keeps those that are up to date;
- so does a unit written by an older revision of ltxdist-prepare's own code (revision.py: a fix to how
  samples are made changes none of the other inputs), named with the changelog lines since its revision;
- a manifest that matches none of the finished units (another dataset pointed at the same --out) is
  refused unless `--overwrite`, rather than silently replacing hours of encoding.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ltxdist.data.manifest import ManifestRow
from ltxdist.data.prepare.revision import PREPARE_REVISION, REVISION_KEY, recorded_revision
from ltxdist.data.shards import shard_name

UNIT_SUFFIX = ".unit.json"


def unit_record_path(out: Path, unit: int) -> Path:
    return out / (Path(shard_name(unit)).stem + UNIT_SUFFIX)


def _file_stamp(path: Path | None) -> list[Any] | None:
    """Size and whole-second modification time: a replaced or re-rendered file changes it; a copy that
    keeps times (rsync -a, cp -p) does not. None for no file, "missing" for a file that is not there."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except (OSError, ValueError):  # ValueError: a name no file can have (a NUL, a lone surrogate)
        return ["missing"]
    return [st.st_size, int(st.st_mtime)]


def row_digest(r: ManifestRow) -> str:
    described = [
        r.index,
        str(r.video),
        r.caption,
        str(r.reference_video),
        str(r.reference_image),
        str(r.reference_audio),
        r.problem,
        [_file_stamp(p) for p in (r.video, r.reference_video, r.reference_image, r.reference_audio)],
    ]
    return hashlib.sha256(json.dumps(described).encode()).hexdigest()[:16]


def _combined(digests: list[str]) -> str:
    return hashlib.sha256("|".join(digests).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class UnitInputs:
    """Everything one shard's content depends on."""

    model_version: str
    encoder_fingerprints: dict[str, str]
    options: dict[str, Any]  # preparation options: buckets, strategy, trigger, text tokens, ...
    rows_digest: str  # digest of the unit's row digests
    prepare_revision: int = PREPARE_REVISION  # ltxdist-prepare's own code (revision.py); REVISION_KEY

    def record(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PreparePlan:
    units: list[list[ManifestRow]]
    inputs: list[UnitInputs]  # per unit
    row_digests: list[list[str]]  # per unit, per row
    model_version: str
    encoder_fingerprints: dict[str, str]
    options: dict[str, Any]

    @property
    def num_units(self) -> int:
        return len(self.units)

    def content_key(self) -> str:
        """One digest over every unit's inputs: changes whenever any shard's content would."""
        blob = json.dumps([i.record() for i in self.inputs], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def make_plan(
    rows: list[ManifestRow],
    samples_per_shard: int,
    model_version: str,
    encoder_fingerprints: dict[str, str],
    options: dict[str, Any],
) -> PreparePlan:
    units = [rows[i : i + samples_per_shard] for i in range(0, len(rows), samples_per_shard)]
    options = json.loads(json.dumps(options, sort_keys=True, default=str))
    digests = [[row_digest(r) for r in u] for u in units]
    inputs = [UnitInputs(model_version, dict(encoder_fingerprints), options, _combined(d)) for d in digests]
    return PreparePlan(units, inputs, digests, model_version, dict(encoder_fingerprints), options)


def whole_dataset_changes(found: dict[str, Any], plan: PreparePlan) -> list[str]:
    """Differences that make every shard stale (ltxdist-prepare revision, model, encoders, options), for
    messages."""
    out = []
    revision = recorded_revision(found)
    if revision != PREPARE_REVISION:
        newer = " (written by a newer ltxdist)" if revision > PREPARE_REVISION else ""
        out.append(f"ltxdist-prepare revision {revision} -> {PREPARE_REVISION}{newer}")
    if found.get("model_version") != plan.model_version:
        out.append(f"model version {found.get('model_version')} -> {plan.model_version}")
    old_fp, new_fp = found.get("encoder_fingerprints") or {}, plan.encoder_fingerprints
    changed = sorted(k for k in set(old_fp) | set(new_fp) if old_fp.get(k) != new_fp.get(k))
    if changed:
        out.append(f"encoder fingerprints changed ({', '.join(changed)})")
    if "options" not in found:
        out.append("written by an older ltxdist-prepare (no per-shard record of its inputs)")
    elif found["options"] != plan.options:
        old, new = found["options"], plan.options
        keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        out.append(
            "preparation options changed ("
            + ", ".join(f"{k}: {old.get(k)} -> {new.get(k)}" for k in keys)
            + ")"
        )
    return out


def read_record(out: Path, unit: int) -> dict[str, Any] | None:
    path = unit_record_path(out, unit)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # cut short by a kill: the unit is redone


def unit_is_current(out: Path, unit: int, plan: PreparePlan) -> dict[str, Any] | None:
    """The unit's record if its shard is finished and made from exactly this plan's inputs."""
    record = read_record(out, unit)
    if record is None or unit >= plan.num_units:
        return None
    wanted = plan.inputs[unit].record()
    found = {k: record.get(k) for k in wanted} | {REVISION_KEY: recorded_revision(record)}
    if found != wanted:
        return None
    if record.get("shard") is not None and not (out / shard_name(unit)).is_file():
        return None  # the tar was removed by hand: redo the unit
    return record


def existing_units(out: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1].split(".")[0]) for p in out.glob("shard-*" + UNIT_SUFFIX))


@dataclass(frozen=True)
class Staleness:
    """What in an output folder a plan would replace, for _check_existing's refusal."""

    reasons: list[str]  # whole-dataset differences, naming the first file that has them
    other_dataset: bool  # finished units exist, but none made from any row of this manifest
    oldest_revision: int  # the oldest ltxdist-prepare revision recorded there (this one's if none found)
    newest_revision: int  # the newest (above PREPARE_REVISION: written by a newer ltxdist)


def stale_reasons(out: Path, plan: PreparePlan, index: dict[str, Any] | None) -> Staleness:
    """Whole-dataset differences between `out` and this plan, and whether `out` looks like another
    dataset: finished units exist but not one of their rows is among this manifest's (a fixed or appended
    row leaves the other rows as they were)."""
    reasons: list[str] = []
    revisions = []
    if index is not None:
        found = {**index, "options": plan.options}  # the index does not keep per-unit options
        changes = whole_dataset_changes(found, plan)
        reasons = [f"index.json: {'; '.join(changes)}"] if changes else []
        revisions.append(recorded_revision(index))
    with_rows, same_rows = 0, 0
    for unit in existing_units(out):
        record = read_record(out, unit)
        if record is None:
            continue
        changes = whole_dataset_changes(record, plan)
        if changes and not reasons:
            reasons = [f"{unit_record_path(out, unit).name}: {'; '.join(changes)}"]
        revisions.append(recorded_revision(record))
        # Rows are compared whatever else changed (a row's digest is its own content): another manifest
        # pointed at an old dataset must still be named as another dataset, not as one to re-encode.
        if "row_digests" in record:
            with_rows += 1
            if unit < plan.num_units:
                same_rows += len(set(record["row_digests"]) & set(plan.row_digests[unit]))
    other_dataset = with_rows > 0 and same_rows == 0
    return Staleness(
        reasons,
        other_dataset,
        min(revisions, default=PREPARE_REVISION),
        max(revisions, default=PREPARE_REVISION),
    )
