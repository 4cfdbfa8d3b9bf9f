"""Small helpers shared by the Triton kernel modules (launch checks, precision, the dropout tile)."""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

_TRUE = {"1", "true", "yes", "on", "y"}


def interpreting() -> bool:
    """True under TRITON_INTERPRET=1 (kernels then run on CPU tensors, one program at a time).

    Triton decides at decoration time, so the variable must be set before the kernel modules import.
    """
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in _TRUE


def check_launchable(*tensors: torch.Tensor | None) -> None:
    """Fail with a clear message instead of a Triton driver error when no backend can run the kernel."""
    for t in tensors:
        if t is None:
            continue
        if t.device.type != "cuda" and not interpreting():
            raise RuntimeError(
                f"Triton kernels need CUDA tensors (got {t.device}); use the torch backend on CPU "
                "or set TRITON_INTERPRET=1 before importing ltxdist_kernels (tests only)"
            )


def dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs would default to TF32 on tensor cores (10-bit mantissa); "ieee" keeps fp32 results
    # comparable with torch's fp32 matmul. The option is ignored for bf16/fp16 inputs.
    return "ieee" if dtype == torch.float32 else "tf32"


def next_pow2(n: int, minimum: int = 16) -> int:
    # tl.dot needs every block dim >= 16; block sizes must be powers of two.
    return max(minimum, triton.next_power_of_2(max(int(n), 1)))


@functools.lru_cache(maxsize=8)
def num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def parallel_programs(device: torch.device) -> int:
    """Programs that fill the GPU about twice; a small number in the interpreter (cost is per program)."""
    if device.type != "cuda":
        return 2
    return 2 * num_sms(device.index if device.index is not None else torch.cuda.current_device())


@triton.jit
def dropout_keep_tile(seed, rows, col_start, keep_threshold, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """(BLOCK_M, BLOCK_K) keep-mask for rows `rows` and columns col_start + [0, BLOCK_K).

    One Philox call yields 4 words, so four neighbouring columns share a counter (k // 4, m); the words
    are interleaved back to column order. col_start and BLOCK_K must be multiples of 4. The same rule
    is implemented in torch by reference.dropout_keep_mask.
    """
    groups = col_start // 4 + tl.arange(0, BLOCK_K // 4)
    counters = (rows[:, None].to(tl.int64) << 32) | groups[None, :].to(tl.int64)
    r0, r1, r2, r3 = tl.randint4x(seed, counters)
    # join(join(r0, r2), join(r1, r3)) has element order r0, r1, r2, r3 along its last two axes.
    words = tl.reshape(tl.join(tl.join(r0, r2), tl.join(r1, r3)), (BLOCK_M, BLOCK_K))
    return (words >> 8).to(tl.int32) >= keep_threshold
