"""What a checkpoint directory holds, and when it counts as complete.

    step-000500/
      shard-00001-model-00001-of-00001.safetensors   tensors written by rank 0 (torch.distributed.checkpoint's
      shard-00002-model-00001-of-00001.safetensors   Hugging Face storage: one file per writing rank, each
      ...                                            tensor piece's offset in the file's own metadata)
      train_state.json                               step, data position, counters, scheduler, layout, ...
      meta.json                                      written last: format, step, every file with its size

The directory is written under a temporary name and renamed when complete (ltxdist/io.py), so a
directory named step-N with a meta.json is complete. meta.json lists every file with its size, so a
missing, truncated or foreign file is caught before anything is read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ltxdist.io import TMP_MARKER

FORMAT = 3
TENSOR_SUFFIX = ".safetensors"
TRAIN_STATE_FILE = "train_state.json"
COMPLETE_FILE = "meta.json"
# Files of the format before torch.distributed.checkpoint (ltxdist <= 0.1: formats 1 and 2).
LEGACY_FILES = ("state.json", "tensors.safetensors")
CONVERT_COMMAND = "python -m ltxdist.checkpoint.convert"


class CheckpointFormatError(ValueError):
    """A checkpoint is damaged, incomplete or unreadable; the message names the file."""


class LegacyCheckpointError(CheckpointFormatError):
    """A checkpoint of an earlier ltxdist format; the message says how to convert it."""


class CheckpointMismatchError(ValueError):
    """A readable checkpoint that does not fit this run (other adapters); the message names the flag."""


@dataclass(frozen=True)
class Manifest:
    step: int
    files: dict[str, int]  # name -> size in bytes

    @property
    def tensor_files(self) -> list[str]:
        return sorted(name for name in self.files if name.endswith(TENSOR_SUFFIX))


def is_complete_checkpoint(path: Path) -> bool:
    return path.is_dir() and TMP_MARKER not in path.name and (path / COMPLETE_FILE).is_file()


def is_legacy_checkpoint(path: Path) -> bool:
    return any((path / name).exists() for name in LEGACY_FILES)


def legacy_error(path: Path) -> LegacyCheckpointError:
    return LegacyCheckpointError(
        f"{path} is a checkpoint of an earlier ltxdist (state.json + tensors.safetensors, before "
        f"torch.distributed.checkpoint); convert it in place with `{CONVERT_COMMAND} {path}` "
        "(needs its run's config.yaml two levels up, or --config), then resume"
    )


def write_manifest_record(directory: Path, step: int) -> dict:
    """meta.json's content for the files now in `directory` (call once they are all written)."""
    files = {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.name != COMPLETE_FILE}
    return {"complete": True, "format": FORMAT, "step": step, "files": files}


def read_manifest(path: Path) -> Manifest:
    """meta.json, with every file it lists present at its size and no tensor file it does not list."""
    if not is_complete_checkpoint(path):
        raise CheckpointFormatError(
            f"{path} is not a complete ltxdist checkpoint (missing {COMPLETE_FILE}); use run.resume=auto to "
            "pick the newest complete one"
        )
    if is_legacy_checkpoint(path):
        raise legacy_error(path)
    meta_path = path / COMPLETE_FILE
    try:
        record = json.loads(meta_path.read_text())
        if not isinstance(record, dict):
            raise TypeError(f"holds a {type(record).__name__}, not an object")
        files = {str(k): int(v) for k, v in record["files"].items()}
        manifest = Manifest(step=int(record["step"]), files=files)
        version = int(record["format"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointFormatError(f"{meta_path}: damaged ({type(exc).__name__}: {exc})") from exc
    if version != FORMAT:
        raise CheckpointFormatError(f"{meta_path}: checkpoint format {version}, this ltxdist reads {FORMAT}")
    for name, size in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointFormatError(f"{file}: missing from the checkpoint ({COMPLETE_FILE} lists it)")
        actual = file.stat().st_size
        if actual != size:
            raise CheckpointFormatError(
                f"{file}: damaged ({actual} bytes, {size} when the checkpoint was written)"
            )
    for extra in sorted(p.name for p in path.glob("*" + TENSOR_SUFFIX)):
        if extra not in files:
            raise CheckpointFormatError(
                f"{path / extra}: not part of the checkpoint ({COMPLETE_FILE} lacks it)"
            )
    return manifest
