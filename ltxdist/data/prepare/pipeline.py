"""Manifest -> webdataset shards of cached latents, resumable, incremental and split across ranks.

Work is cut into fixed units of `samples_per_shard` consecutive manifest rows; unit u becomes
`shard-{u:06d}.tar` and is done by rank u % world_size. A unit is finished when its tar (written to a
temporary name, then renamed) and then its `.unit.json` record (counts, skipped rows, the inputs it was
made from) are on disk, so a rerun skips finished units, works with another world size, and an
interrupted unit is simply redone. Which finished units are still up to date is decided per unit from
its inputs and the revision of ltxdist-prepare that wrote it (plan.py, revision.py): a fixed or appended
row re-encodes only its unit (a folder's clip inserted before others shifts the rows after it).
`index.json` is written once every unit is finished, by whichever rank sees that last; all ranks would
write identical bytes, and each write is atomic.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ltxdist.data.manifest import ManifestRow, printable, read_manifest
from ltxdist.data.prepare.options import env_int
from ltxdist.data.prepare.plan import (
    PreparePlan,
    existing_units,
    make_plan,
    read_record,
    stale_reasons,
    unit_is_current,
    unit_record_path,
)
from ltxdist.data.prepare.revision import PREPARE_REVISION, REVISION_KEY, changes_note
from ltxdist.data.prepare.samples import ClipError, SampleBuilder, SampleSpec
from ltxdist.data.sample import SCHEMA_VERSION, CachedSample
from ltxdist.data.shards import (
    EMPTY_CAPTION_NAME,
    INDEX_NAME,
    ShardIndex,
    empty_caption_metadata,
    save_empty_caption,
    shard_name,
    write_shard,
)
from ltxdist.encoders import EncoderSet, default_text_tokens, encoder_fingerprints, pick_device, pick_dtype
from ltxdist.io import TMP_MARKER, write_json_atomic
from ltxdist.models.checkpoint_file import read_checkpoint_info

log = logging.getLogger(__name__)

REPORT_NAME = "prepare_report.json"


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
    rank_launcher: str = ""  # who set `rank` ("torchrun", "srun"; "" for --rank): picks the GPU (gpu_index)
    device: str = "auto"
    dtype: str = "auto"
    text_tokens: int | None = None
    progress: bool = True
    text_encoder_precision: str = "bf16"  # bf16 | fp8 | int8 (Gemma's Linears in 8 bits: small GPUs)


@dataclass
class PrepareResult:
    complete: bool
    index: ShardIndex | None
    encoded: int = 0  # samples this rank encoded in this run
    resumed_units: int = 0  # units found finished and up to date, and skipped
    replaced_units: int = 0  # finished units whose inputs changed, encoded again
    num_units: int = 0  # shards of the whole dataset (all ranks)
    pending_units: int = 0  # of them not finished (by other ranks) when this rank was done
    skipped: list[dict[str, Any]] = field(default_factory=list)  # all skipped rows (when complete)


def preparation_options(opts: PrepareOptions, text_tokens: int) -> dict[str, Any]:
    """The options every shard's content depends on (besides its rows and the encoders)."""
    described = {
        **asdict(opts.spec),
        "buckets": [b.name for b in opts.spec.buckets],
        "samples_per_shard": opts.samples_per_shard,
        "text_tokens": text_tokens,
    }
    if opts.text_encoder_precision != "bf16":  # 8-bit text embeddings differ: shards must not mix them
        described["text_encoder_precision"] = opts.text_encoder_precision
    return described


def empty_caption_settings(plan: PreparePlan, text_encoder_precision: str) -> dict[str, str]:
    """What the cached empty-caption embedding depends on, as kept in its safetensors metadata: the
    encoders (Gemma's fingerprint includes the text length) and the precision Gemma ran in."""
    return {
        "encoder_fingerprints": json.dumps(plan.encoder_fingerprints, sort_keys=True),
        "text_tokens": str(plan.options["text_tokens"]),
        "text_encoder_precision": text_encoder_precision,
    }


def gpu_index(rank: int, gpu_count: int, env: Mapping[str, str], rank_launcher: str = "") -> int:
    """The GPU this process prepares on (--device auto): torchrun's LOCAL_RANK when torchrun gave the
    rank; else srun's SLURM_LOCALID when srun gave it; else rank % gpu_count. A rank from --rank is no
    launcher's, so neither variable describes this process.

    Why not always rank % gpu_count: under srun the ranks on a node need not be consecutive
    (--distribution=cyclic or plane, an arbitrary node list), so two tasks of a node could share a GPU
    while another stays idle. The local index is the task's index on its own node. It is taken modulo the
    GPUs this process sees: with --gpus-per-task, --gpu-bind or a per-process CUDA_VISIBLE_DEVICES each
    task sees only its own GPU(s)."""
    count = max(1, gpu_count)
    if rank_launcher == "torchrun" and "LOCAL_RANK" in env:
        return env_int(env, "LOCAL_RANK") % count
    if rank_launcher == "srun" and "SLURM_LOCALID" in env:
        return env_int(env, "SLURM_LOCALID") % count
    return rank % count


def _device_for_rank(name: str, rank: int, rank_launcher: str) -> torch.device:
    device = pick_device(name)
    if device.type == "cuda" and name == "auto":
        device = torch.device("cuda", gpu_index(rank, torch.cuda.device_count(), os.environ, rank_launcher))
        torch.cuda.set_device(device)
    return device


def _read_index(out: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out / INDEX_NAME).read_text())
    except (OSError, json.JSONDecodeError):
        return None


# Folder rows are numbered in sorted path order, and a row's number is part of what its shard is keyed by.
FOLDER_SHIFT_HINT = (
    "{input} is a folder: its clips are numbered in sorted path order, so a clip added or removed "
    "anywhere but at the end of that order shifts every later clip to another row (and sample id) and "
    "their shards no longer match. Name new clips so they sort after the existing ones (or list the clips "
    "in a manifest file and append rows), or pass --overwrite to re-encode the shifted shards (another "
    "dataset: choose another --out)"
)


def _check_existing(out: Path, plan: PreparePlan, opts: PrepareOptions) -> None:
    """Refuse to mix with, or silently replace, a cache written by other encoders, with other options,
    by an older ltxdist-prepare revision or for another manifest."""
    found = stale_reasons(out, plan, _read_index(out))
    if found.newest_revision > PREPARE_REVISION:
        # Re-encoding with this older code would undo fixes this ltxdist does not have: never, even
        # with --overwrite.
        raise PrepareError(
            f"{out} holds shards written by a newer ltxdist-prepare (revision {found.newest_revision}; this "
            f"ltxdist writes revision {PREPARE_REVISION}). Upgrade ltxdist to add to or re-encode it, or "
            "choose another --out"
        )
    if found.other_dataset and not opts.overwrite:
        what_to_do = (
            FOLDER_SHIFT_HINT.format(input=opts.input)
            if Path(opts.input).is_dir()
            else "Choose another --out, or pass --overwrite to replace them"
        )
        raise PrepareError(
            f"{out} holds finished shards, none of them made from any row of this manifest (another "
            f"dataset, or every file replaced?). {what_to_do}."
        )
    if opts.overwrite:
        if found.oldest_revision < PREPARE_REVISION and opts.rank == 0:  # said once, not per rank
            log.info(
                "--overwrite: re-encoding the shards an older ltxdist-prepare wrote.%s",
                _revision_note(found.oldest_revision),
            )
        return
    if found.reasons:
        raise PrepareError(
            f"{out} already holds shards from another preparation ({found.reasons[0]}). Re-encoding is "
            "needed; pass --overwrite to replace them (shards already up to date are kept), or choose "
            f"another --out.{_revision_note(found.oldest_revision)}"
        )


def _revision_note(revision: int) -> str:
    """What ltxdist changed in prepared samples since `revision`, one line each ("" when nothing)."""
    note = changes_note(revision)
    return f"\nWhat changed in prepared samples since revision {revision}:\n{note}" if note else ""


def _remove_unit(out: Path, unit: int) -> None:
    for path in (out / shard_name(unit), unit_record_path(out, unit)):
        path.unlink(missing_ok=True)


def _encode_unit(
    rows: list[ManifestRow], builder: SampleBuilder, opts: PrepareOptions, bar: tqdm
) -> tuple[list[CachedSample], list[dict[str, Any]]]:
    samples, skipped = [], []
    for row in rows:
        try:
            samples.append(builder.build(row))
        except ClipError as exc:
            reason = printable(str(exc))  # a non-UTF-8 file name would break the log's UTF-8 stream
            if opts.strict:
                raise PrepareError(f"{reason} (--strict: stopping; finished shards are kept)") from exc
            log.warning("skipping %s", reason)
            skipped.append(
                {
                    "row": row.index,
                    "where": row.where,
                    "source": printable(str(row.video)),
                    "reason": reason,
                }
            )
        bar.update(1)
    return samples, skipped


def _finalize(
    out: Path,
    rows: list[ManifestRow],
    plan: PreparePlan,
    opts: PrepareOptions,
    text_tokens: int,
) -> tuple[ShardIndex | None, list[dict[str, Any]], int]:
    """index.json and the report once every unit is finished; else None and how many are not."""
    records = [unit_is_current(out, u, plan) for u in range(plan.num_units)]
    pending = sum(r is None for r in records)
    if pending:
        return None, [], pending
    for unit in existing_units(out):
        if unit >= plan.num_units:  # left by a longer manifest: no row of this one is in it
            _remove_unit(out, unit)
    index = ShardIndex(
        model_version=plan.model_version,
        encoder_fingerprints=plan.encoder_fingerprints,
        shards=[r["shard"] for r in records if r and r["shard"] is not None],
        extra={
            "prepare_run": plan.content_key(),
            REVISION_KEY: PREPARE_REVISION,
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
    return index, skipped, 0


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
    plan = make_plan(
        rows,
        opts.samples_per_shard,
        read_checkpoint_info(opts.checkpoint).model_version,
        encoder_fingerprints(opts.checkpoint, opts.gemma, text_tokens),
        preparation_options(opts, text_tokens),
    )
    mine = [u for u in range(plan.num_units) if u % opts.world_size == opts.rank]
    _check_existing(out, plan, opts)
    _remove_stale_temporaries(out, mine, opts.rank)

    result = PrepareResult(complete=False, index=None)
    todo = [u for u in mine if unit_is_current(out, u, plan) is None]
    result.resumed_units = len(mine) - len(todo)
    result.replaced_units = sum(read_record(out, u) is not None for u in todo)
    if todo:
        # Until every unit is current again the directory is not a complete dataset.
        (out / INDEX_NAME).unlink(missing_ok=True)
    # The empty caption (caption dropout) is checked on its own: a run killed before its first unit
    # finished leaves it without any unit record that would show it stale.
    empty_caption_wanted = empty_caption_settings(plan, opts.text_encoder_precision)
    empty_caption_stale = empty_caption_metadata(out) != empty_caption_wanted
    if todo or empty_caption_stale:
        device = _device_for_rank(opts.device, opts.rank, opts.rank_launcher)
        encoders = EncoderSet.load(
            opts.checkpoint,
            opts.gemma,
            device=device,
            dtype=pick_dtype(opts.dtype, device),
            text_tokens=text_tokens,
            text_precision=opts.text_encoder_precision,
        )
        assert encoders.fingerprints == plan.encoder_fingerprints
        if empty_caption_stale:
            empty = encoders.text.encode("")
            save_empty_caption(
                out,
                empty.video_context.to(torch.bfloat16),
                empty.audio_context.to(torch.bfloat16),
                empty.context_mask,
                made_with=empty_caption_wanted,
            )
        result.encoded = _encode_units(out, todo, SampleBuilder(opts.spec, encoders), plan, opts)
    index, skipped, result.pending_units = _finalize(out, rows, plan, opts, text_tokens)
    result.complete, result.index, result.skipped = index is not None, index, skipped
    result.num_units = plan.num_units
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


def _encode_units(
    out: Path,
    units: list[int],
    builder: SampleBuilder,
    plan: PreparePlan,
    opts: PrepareOptions,
) -> int:
    encoded = 0
    with tqdm(
        total=sum(len(plan.units[u]) for u in units),
        desc=f"prepare rank {opts.rank}",
        unit="clip",
        disable=not opts.progress,
    ) as bar:
        for unit in units:
            unit_rows = plan.units[unit]
            samples, skipped = _encode_unit(unit_rows, builder, opts, bar)
            # An outdated record goes first: a record on disk always describes the tar beside it.
            unit_record_path(out, unit).unlink(missing_ok=True)
            # Tar second, record last: a record on disk always means its tar is complete.
            entry = write_shard(out / shard_name(unit), samples) if samples else None
            if entry is None:
                (out / shard_name(unit)).unlink(missing_ok=True)
            write_json_atomic(
                unit_record_path(out, unit),
                {
                    **plan.inputs[unit].record(),
                    "row_digests": plan.row_digests[unit],
                    "unit": unit,
                    "rows": [unit_rows[0].index, unit_rows[-1].index + 1],
                    "shard": entry,
                    "skipped": skipped,
                },
            )
            encoded += len(samples)
    return encoded
