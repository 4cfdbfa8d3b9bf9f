"""Helpers shared by the kernel tests (the conftest of this folder has already chosen the Triton mode)."""

from __future__ import annotations

import zlib

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")

# bf16 kernels need a GPU: the interpreter's bf16 tl.dot is wrong.
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")


def max_rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|, in float64."""
    expected = expected.detach().double()
    diff = (actual.detach().double() - expected).abs().max()
    return (diff / expected.abs().max().clamp_min(1e-30)).item()


def seeded(*key: object) -> torch.Generator:
    """A CPU generator seeded from the test parameters: fresh inputs per case, reproducible runs."""
    # crc32, not hash(): str hashes are salted per process.
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))
