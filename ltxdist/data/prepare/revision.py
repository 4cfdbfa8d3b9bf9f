"""Which revision of ltxdist-prepare's own code a dataset was prepared by.

A shard's record keys it by its inputs (plan.py: model, encoders, options, rows and their files), but
when ltxdist itself fixes how a sample is made from those same inputs, none of them changes: without a
revision, a dataset prepared before the fix would be taken as up to date by a rerun and trained on as it
is. `PREPARE_REVISION` is recorded in every shard's `.unit.json` and in `index.json`; a record without it
was written before revisions were recorded, which is revision 1.

Raise it (and add a line below) when the same rows, files and options now give other shard content. A fix
that changes what a row *is* needs no revision: the row digest already changes (a caption sidecar's
byte-order mark dropped, b5ac799), and so does a fix for rows that used to stop the run, since no finished
shard can hold them (a lone UTF-16 surrogate in a manifest value, dd7fbed; a file name that is not UTF-8,
8fe8b55).

No heavy imports: training start-up reads it to compare a dataset's revision with this one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PREPARE_REVISION = 2
REVISION_KEY = "prepare_revision"  # in each shard's .unit.json and in index.json

# revision -> what changed in the prepared samples from that revision on (date, commits).
CHANGELOG: dict[int, str] = {
    1: "ltxdist-prepare from 2026-11-21 until revisions were recorded (2026-12-05)",
    2: "2026-12-05: phone clips with a display rotation are encoded upright, not sideways (524f75f, "
    "d1fcfaa); JPEG, PNG (also animated) and WebP photos (as clips or reference_image) are turned upright "
    "by their EXIF Orientation, mirrored ones included (1156cb2, d18f1a7, 3ce19e3); --lora-trigger is no "
    "longer doubled in a caption that starts with it followed by punctuation (1124dce)",
}


def recorded_revision(record: Mapping[str, Any]) -> int:
    """The revision a unit record or index.json was written at: 1 when it records none (written before
    revisions were), or records something that is not a whole number (a hand-edited file)."""
    value = record.get(REVISION_KEY)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return 1


def changes_note(revision: int, indent: str = "  ") -> str:
    """The changelog lines of every revision after `revision` up to this one, oldest first, one indented
    line each ("" when nothing changed since)."""
    return "\n".join(
        f"{indent}revision {r}: {CHANGELOG[r]}" for r in sorted(CHANGELOG) if revision < r <= PREPARE_REVISION
    )
