"""safetensors' real `safe_open`, wrapped to count which tensors a piece of code reads from which file:
tests of "reads the header only" / "reads each tensor once" patch it into the module under test."""

from __future__ import annotations

from collections import Counter

import safetensors


def tensor_read_spy(reads: Counter[tuple[str, str]], *, forbid: bool = False) -> type:
    """A drop-in for `safe_open` that adds 1 to reads[(path, key)] per `get_tensor`; with `forbid`, any
    tensor read fails the test instead."""

    class SpyOpen:
        def __init__(self, path: str, framework: str):
            self.path, self.file = str(path), safetensors.safe_open(path, framework=framework)

        def __enter__(self):
            self.file.__enter__()
            return self

        def __exit__(self, *exc):
            return self.file.__exit__(*exc)

        def get_tensor(self, key: str):
            if forbid:
                raise AssertionError(f"read the tensor {key} of {self.path}")
            reads[(self.path, key)] += 1
            return self.file.get_tensor(key)

        def __getattr__(self, name: str):
            return getattr(self.file, name)

    return SpyOpen
