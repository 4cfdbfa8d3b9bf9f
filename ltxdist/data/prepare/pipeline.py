"""Manifest -> webdataset shards of cached latents, resumable and split across ranks.

Work is cut into fixed units of `samples_per_shard` consecutive manifest rows; unit u becomes
`shard-{u:06d}.tar` and is done by rank u % world_size. A unit is finished when its tar (written to a
temporary name, then renamed) and then its `.unit.json` record (counts, skipped rows, fingerprints) are
on disk, so a rerun skips finished units, works with another world size, and an interrupted unit is
simply redone. `index.json` is written once every unit is finished, by whichever rank sees that last;
all ranks would write identical bytes, and each write is atomic.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ltxdist.data.manifest import ManifestRow, read_manifest
from ltxdist.data.prepare.samples import ClipError, SampleBuilder, SampleSpec
from ltxdist.data.sample import SCHEMA_VERSION, CachedSample
from ltxdist.data.shards import (
    EMPTY_CAPTION_NAME,
    INDEX_NAME,
    ShardIndex,
    save_empty_caption,
    shard_name,
    write_shard,
)
from ltxdist.encoders import EncoderSet, default_text_tokens, encoder_fingerprints, pick_device, pick_dtype
from ltxdist.io import TMP_MARKER, write_json_atomic
from ltxdist.models.checkpoint_file import read_checkpoint_info

log = logging.getLogger(__name__)

REPORT_NAME = "prepare_report.json"
UNIT_SUFFIX = ".unit.json"


class PrepareError(RuntimeError):
    """The run cannot go on: stale cache, --strict failure, bad options. Names what to fix."""


@dataclass
class PrepareOptions:
    input: Path
    out: Path
    checkpoint: Path
    gemma: Path
    spec: SampleSpec
    samples_per_shard: int = 64
    strict: bool = False
    overwrite: bool = False
    rank: int = 0
    world_size: int = 1
    device: str = "auto"
    dtype: str = "auto"
    text_tokens: int | None = None
    progress: bool = True


@dataclass
class PrepareResult:
    complete: bool
    index: ShardIndex | None
    encoded: int = 0  # samples this rank encoded in this run
    resumed_units: int = 0  # units found finished and skipped
    skipped: list[dict[str, Any]] = field(default_factory=list)  # all skipped rows (when complete)


def unit_record_path(out: Path, unit: int) -> Path:
    return out / (Path(shard_name(unit)).stem + UNIT_SUFFIX)


def run_fingerprint(rows: list[ManifestRow], opts: PrepareOptions, text_tokens: int) -> str:
    """What the shards' content depends on besides the encoders; a resume must see the same."""
    described = {
        "rows": [
            [
                r.index,
                str(r.video),
                r.caption,
                str(r.reference_video),
                str(r.reference_image),
                str(r.reference_audio),
                r.problem,
            ]
            for r in rows
        ],
        "spec": {**asdict(opts.spec), "buckets": [b.name for b in opts.spec.buckets]},
        "samples_per_shard": opts.samples_per_shard,
        "text_tokens": text_tokens,
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


def _device_for_rank(name: str, rank: int) -> torch.device:
    device = pick_device(name)
    if device.type == "cuda" and name == "auto":
        local = int(os.environ.get("LOCAL_RANK", rank % max(1, torch.cuda.device_count())))
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    return device


def _differences(found: dict[str, Any], want: dict[str, Any]) -> list[str]:
    out = []
    if found.get("model_version") != want["model_version"]:
        out.append(f"model version {found.get('model_version')} -> {want['model_version']}")
    old_fp, new_fp = found.get("encoder_fingerprints", {}), want["encoder_fingerprints"]
    changed = sorted(k for k in set(old_fp) | set(new_fp) if old_fp.get(k) != new_fp.get(k))
    if changed:
        out.append(f"encoder fingerprints changed ({', '.join(changed)})")
    if found.get("run") != want["run"]:
        out.append("manifest rows or preparation options changed")
    return out


def _check_existing(out: Path, want: dict[str, Any], overwrite: bool) -> None:
    """Refuse to mix with, or silently reuse, a cache written by other encoders or another manifest."""
    found: list[tuple[Path, dict[str, Any]]] = []
    index_path = out / INDEX_NAME
    if index_path.is_file():
        raw = json.loads(index_path.read_text())
        found.append(
            (
                index_path,
                {
                    "model_version": raw.get("model_version"),
                    "encoder_fingerprints": raw.get("encoder_fingerprints", {}),
                    "run": raw.get("prepare_run"),
                },
            )
        )
    for record in sorted(out.glob("shard-*" + UNIT_SUFFIX)):
        found.append((record, json.loads(record.read_text())))
    for path, identity in found:
        diffs = _differences(identity, want)
        if diffs and not overwrite:
            raise PrepareError(
                f"{out} already holds shards from another preparation ({path.name}: {'; '.join(diffs)}). "
                "Re-encoding is needed; pass --overwrite to replace them, or choose another --out."
            )


def _remove_unit(out: Path, unit: int) -> None:
    for path in (out / shard_name(unit), unit_record_path(out, unit)):
        path.unlink(missing_ok=True)


def _unit_done(out: Path, unit: int, want: dict[str, Any]) -> dict[str, Any] | None:
    record_path = unit_record_path(out, unit)
    if not record_path.is_file():
        return None
    record = json.loads(record_path.read_text())
    if _differences(record, want):
        return None
    if record["shard"] is not None and not (out / shard_name(unit)).is_file():
        return None  # the tar was removed by hand: redo the unit
    return record


def _encode_unit(
    rows: list[ManifestRow], builder: SampleBuilder, opts: PrepareOptions, bar: tqdm
) -> tuple[list[CachedSample], list[dict[str, Any]]]:
    samples, skipped = [], []
    for row in rows:
        try:
            samples.append(builder.build(row))
        except ClipError as exc:
            if opts.strict:
                raise PrepareError(f"{exc} (--strict: stopping; finished shards are kept)") from exc
            log.warning("skipping %s", exc)
            skipped.append(
                {"row": row.index, "where": row.where, "source": str(row.video), "reason": str(exc)}
            )
        bar.update(1)
    return samples, skipped


def _finalize(
    out: Path,
    rows: list[ManifestRow],
    num_units: int,
    want: dict[str, Any],
    opts: PrepareOptions,
    text_tokens: int,
) -> tuple[ShardIndex | None, list[dict[str, Any]]]:
    records = [_unit_done(out, u, want) for u in range(num_units)]
    if any(r is None for r in records):
        return None, []
    index = ShardIndex(
        model_version=want["model_version"],
        encoder_fingerprints=want["encoder_fingerprints"],
        shards=[r["shard"] for r in records if r and r["shard"] is not None],
        extra={
            "prepare_run": want["run"],
            "complete": True,
            "text_tokens": text_tokens,
            "strategy": opts.spec.strategy,
            "reference_downscale_factor": opts.spec.reference_downscale_factor,
            "reference_audio_seconds": opts.spec.reference_audio_seconds,
            "bucket_spec": [b.name for b in opts.spec.buckets],
            "audio": opts.spec.audio,
            "lora_trigger": opts.spec.lora_trigger,
            "num_rows": len(rows),
            "num_skipped": sum(len(r["skipped"]) for r in records if r),
            "report": REPORT_NAME,
        },
    )
    skipped = [s for r in records if r for s in r["skipped"]]
    write_json_atomic(
        out / REPORT_NAME,
        {
            "schema_version": SCHEMA_VERSION,
            "num_rows": len(rows),
            "num_samples": index.num_samples,
            "buckets": index.buckets,
            "skipped": skipped,
        },
    )
    index.save(out)
    return index, skipped


def prepare_dataset(opts: PrepareOptions) -> PrepareResult:
    if opts.samples_per_shard < 1:
        raise PrepareError(f"--samples-per-shard must be >= 1, got {opts.samples_per_shard}")
    if not 0 <= opts.rank < opts.world_size:
        raise PrepareError(f"--rank {opts.rank} is outside --world-size {opts.world_size}")
    rows = read_manifest(opts.input)
    out = opts.out
    out.mkdir(parents=True, exist_ok=True)
    # Identity first, from file headers only: a stale cache is refused (and a finished one recognised)
    # before minutes of loading a 12B text encoder.
    text_tokens = opts.text_tokens or default_text_tokens(Path(opts.gemma))
    want = {
        "model_version": read_checkpoint_info(opts.checkpoint).model_version,
        "encoder_fingerprints": encoder_fingerprints(opts.checkpoint, opts.gemma, text_tokens),
        "run": run_fingerprint(rows, opts, text_tokens),
    }
    num_units = -(-len(rows) // opts.samples_per_shard)
    mine = [u for u in range(num_units) if u % opts.world_size == opts.rank]
    _check_existing(out, want, opts.overwrite)
    _remove_stale_temporaries(out, mine, opts.rank)
    if opts.overwrite:
        _remove_for_overwrite(out, mine, num_units, opts.rank)

    result = PrepareResult(complete=False, index=None)
    todo = [u for u in mine if _unit_done(out, u, want) is None]
    result.resumed_units = len(mine) - len(todo)
    if todo or not (out / EMPTY_CAPTION_NAME).is_file():
        device = _device_for_rank(opts.device, opts.rank)
        encoders = EncoderSet.load(
            opts.checkpoint,
            opts.gemma,
            device=device,
            dtype=pick_dtype(opts.dtype, device),
            text_tokens=text_tokens,
        )
        assert encoders.fingerprints == want["encoder_fingerprints"]
        if not (out / EMPTY_CAPTION_NAME).is_file():
            empty = encoders.text.encode("")
            save_empty_caption(
                out,
                empty.video_context.to(torch.bfloat16),
                empty.audio_context.to(torch.bfloat16),
                empty.context_mask,
            )
        result.encoded = _encode_units(out, rows, todo, SampleBuilder(opts.spec, encoders), want, opts)
    index, skipped = _finalize(out, rows, num_units, want, opts, text_tokens)
    result.complete, result.index, result.skipped = index is not None, index, skipped
    if index is None:
        log.info(
            "rank %d finished its units; %s is written by the last rank to finish", opts.rank, INDEX_NAME
        )
    return result


def _remove_stale_temporaries(out: Path, units: list[int], rank: int) -> None:
    """The temporary files a killed run left half-written (`<target>.tmp-*`, ltxdist/io.py), before any
    work starts. Each rank removes those of its own units, and rank 0 those of the shared files too: the
    ranks of one preparation start together, and the shared files are written only after encoders load
    (empty caption) or once every unit is done (index, report)."""
    targets = {shard_name(u) for u in units} | {unit_record_path(out, u).name for u in units}
    if rank == 0:
        targets |= {INDEX_NAME, REPORT_NAME, EMPTY_CAPTION_NAME}
    for path in out.iterdir():
        target, marker, _ = path.name.partition(TMP_MARKER)
        if marker and target in targets and path.is_file():
            path.unlink(missing_ok=True)


def _remove_for_overwrite(out: Path, mine: list[int], num_units: int, rank: int) -> None:
    # Each rank removes only its own units, so ranks starting at different times never race.
    for unit in mine:
        _remove_unit(out, unit)
    if rank == 0:
        for path in (out / INDEX_NAME, out / REPORT_NAME, out / EMPTY_CAPTION_NAME):
            path.unlink(missing_ok=True)
        for record in out.glob("shard-*" + UNIT_SUFFIX):  # units of a longer, older manifest
            unit = int(record.name.split("-")[1].split(".")[0])
            if unit >= num_units:
                _remove_unit(out, unit)


def _encode_units(
    out: Path,
    rows: list[ManifestRow],
    units: list[int],
    builder: SampleBuilder,
    want: dict[str, Any],
    opts: PrepareOptions,
) -> int:
    spans = {u: rows[u * opts.samples_per_shard : (u + 1) * opts.samples_per_shard] for u in units}
    encoded = 0
    with tqdm(
        total=sum(len(r) for r in spans.values()),
        desc=f"prepare rank {opts.rank}",
        unit="clip",
        disable=not opts.progress,
    ) as bar:
        for unit, unit_rows in spans.items():
            samples, skipped = _encode_unit(unit_rows, builder, opts, bar)
            # Tar first, record second: a record on disk always means its tar is complete.
            entry = write_shard(out / shard_name(unit), samples) if samples else None
            if entry is None:
                (out / shard_name(unit)).unlink(missing_ok=True)
            write_json_atomic(
                unit_record_path(out, unit),
                {
                    **want,
                    "unit": unit,
                    "rows": [unit_rows[0].index, unit_rows[-1].index + 1],
                    "shard": entry,
                    "skipped": skipped,
                },
            )
            encoded += len(samples)
    return encoded
