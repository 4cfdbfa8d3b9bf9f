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
import math
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

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


# torch dtype -> its safetensors name, and back: the one table of the file format's dtypes.
SAFETENSORS_DTYPE_NAMES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
SAFETENSORS_DTYPES = {name: dtype for dtype, name in SAFETENSORS_DTYPE_NAMES.items()}


class SafetensorsWriter:
    """Writes one safetensors file into an open binary stream, tensor by tensor.

    The header (every name, dtype and shape, known in advance) goes first; each tensor's bytes are then
    written straight from its memory as it arrives. So the file never exists a second time in memory
    (safetensors' own `save` builds it as one bytes object) and the tensors need not all exist at once
    (a LoRA export gathers one adapter at a time). Write errors are plain OSErrors, with their errno.
    Tensors are laid out by element size, largest first, so every one starts aligned to its dtype."""

    def __init__(
        self,
        stream: Any,
        layout: dict[str, tuple[torch.dtype, tuple[int, ...]]],
        metadata: dict[str, str] | None = None,
    ):
        self.stream = stream
        # Stable sort: same-size dtypes keep the caller's order.
        self.order = sorted(layout, key=lambda k: -layout[k][0].itemsize)
        self._layout = layout
        header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
        offset = 0
        for name in self.order:
            dtype, shape = layout[name]
            if dtype not in SAFETENSORS_DTYPE_NAMES:
                raise TypeError(f"{name}: dtype {dtype} cannot be stored in safetensors")
            size = dtype.itemsize * math.prod(shape)
            header[name] = {
                "dtype": SAFETENSORS_DTYPE_NAMES[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + size],
            }
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
        stream.write(struct.pack("<Q", len(raw)))
        stream.write(raw)
        self._next = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """The next tensor in `order`; must match the layout it was announced with."""
        expected = self.order[self._next] if self._next < len(self.order) else None
        dtype, shape = self._layout.get(name, (None, None))
        if name != expected or tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape or ()):
            raise ValueError(
                f"safetensors stream: got {name} {tuple(tensor.shape)} {tensor.dtype}, expected {expected} "
                f"{shape} {dtype}"
            )
        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        self.stream.write(memoryview(data.numpy()))  # no copy: the tensor's own memory
        self._next += 1

    def finish(self) -> None:
        if self._next != len(self.order):
            raise ValueError(f"safetensors stream: {len(self.order) - self._next} tensor(s) never written")


def save_safetensors_atomic(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike[str], metadata: dict[str, str] | None = None
) -> None:
    """`tensors` as one safetensors file, atomically, without building the file in memory."""
    layout = {k: (v.dtype, tuple(v.shape)) for k, v in tensors.items()}
    with atomic_file(path) as tmp, open(tmp, "wb") as stream:
        writer = SafetensorsWriter(stream, layout, metadata)
        for name in writer.order:
            writer.write(name, tensors[name])
        writer.finish()


class AtomicDirectory:
    """A temporary directory that replaces `path` as a whole on `commit()`, or is removed by `abort()`.

    For writes shared by several processes: one process creates it and hands `tmp` to the others; it
    commits once every process has written its files (ltxdist/checkpoint). `atomic_directory` is the
    one-process form."""

    def __init__(self, path: str | os.PathLike[str]):
        self.target = Path(path)
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(prefix=self.target.name + TMP_MARKER, dir=self.target.parent))
            os.chmod(self.tmp, 0o777 & ~_umask())
        except OSError as exc:
            raise _write_error(self.target, exc, "directory ") from exc

    def commit(self) -> None:
        target, tmp = self.target, self.tmp
        try:
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
            self.abort()
            raise _write_error(target, exc, "directory ") from exc

    def abort(self) -> None:
        if self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields a temporary directory; on success it replaces `path` as a whole."""
    directory = AtomicDirectory(path)
    try:
        yield directory.tmp
    except OSError as exc:
        directory.abort()
        raise _write_error(directory.target, exc, "directory ") from exc
    except BaseException:
        directory.abort()
        raise
    directory.commit()
