"""Atomic file and directory writes: a reader sees the old file, the new file, or nothing; never half.

Write to a temporary sibling, fsync, then rename over the target (rename is atomic on POSIX within a
filesystem). A failed write (full disk, quota, I/O error) removes the temporary and raises
`AtomicWriteError` naming the target; the previous version of the target is untouched. Only a process
killed mid-write leaves a `*.tmp-*` sibling behind, which readers ignore and the next training run
removes (training/callbacks.py).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_save

TMP_MARKER = ".tmp-"


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # no space, quota exceeded, file size limit


class AtomicWriteError(OSError):
    """An atomic write failed; nothing was written at the target (its previous version, if any, is
    untouched). An OSError with the original errno, whose message names the target."""

    def __init__(self, err: int, target: Path, reason: str, what: str = ""):
        hint = " (the disk or quota is full: free space and run again)" if err in _FULL else ""
        super().__init__(
            err,
            f"could not write {what}{target}: {reason}{hint}; nothing was written there and any previous "
            "version is untouched",
        )
        self.target, self.reason = target, reason


def _write_error(target: Path, exc: OSError, what: str = "") -> AtomicWriteError:
    # A failed file inside an atomic directory is reported as the directory's failure (the file was a
    # temporary one), with the underlying reason.
    reason = exc.reason if isinstance(exc, AtomicWriteError) else (exc.strerror or str(exc))
    return AtomicWriteError(exc.errno or errno.EIO, target, reason, what)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields a temporary path next to `path`; on success it is renamed to `path`."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=target.name + TMP_MARKER, dir=target.parent)
    except OSError as exc:
        raise _write_error(target, exc) from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        # mkstemp creates 0600; give the file the permissions a plain open() would (shared storage).
        os.chmod(tmp, 0o666 & ~_umask())
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except OSError as exc:
        raise _write_error(target, exc) from exc
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def save_safetensors_atomic(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike[str], metadata: dict[str, str] | None = None
) -> None:
    # safetensors refuses non-contiguous or shared-storage tensors; copy into fresh contiguous buffers.
    clean = {
        k: v.detach().contiguous().clone() if not v.is_contiguous() else v.detach()
        for k, v in tensors.items()
    }
    write_bytes_atomic(path, safetensors_save(clean, metadata=metadata))


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields a temporary directory; on success it replaces `path` as a whole."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=target.name + TMP_MARKER, dir=target.parent))
    except OSError as exc:
        raise _write_error(target, exc, "directory ") from exc
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        _fsync_dir(tmp)
        if target.exists():
            # Move the old one aside first so the target is never missing AND half-written.
            old = target.with_name(target.name + TMP_MARKER + "old")
            os.replace(target, old)
            try:
                os.replace(tmp, target)
            except OSError:
                os.replace(old, target)  # put the previous version back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        _fsync_dir(target.parent)
    except OSError as exc:
        raise _write_error(target, exc, "directory ") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
