"""Small helpers shared by the Triton kernel modules (launch checks, precision, the dropout tile)."""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

_TRUE = {"1", "true", "yes", "on", "y"}


# Triton picks compiled or interpreted kernels when a function is decorated, i.e. when the kernel
# modules are imported: record that moment's choice (the tests reload these modules to switch).
_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in _TRUE


def interpreting() -> bool:
    """True when the kernels were built for TRITON_INTERPRET=1 (they then run on CPU tensors)."""
    return _INTERPRETED


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


# The device helpers below use only Triton builtins and jit functions of this module, never jit
# functions of Triton's own library (tl.sum, tl.zeros, tl.cdiv, tl.randint4x ...): those are decorated
# when triton is imported, and if that happened before TRITON_INTERPRET=1 was set (lightning imports
# triton) they refuse to run inside interpreted kernels. Reloading these modules is then enough.


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def row_sum(x):
    """Sum of a 1-D block (tl.reduce with our own combine function)."""
    return tl.reduce(x, 0, _add)


@triton.jit
def cdiv(a, b):
    return (a + b - 1) // b


@triton.jit
def _philox_round(c0, c1, c2, c3, k0, k1):
    # One Philox-4x32 round (Salmon et al. 2011): two 32x32->64 multiplies, halves xored crosswise.
    hi_b = tl.math.umulhi(c2, 0xCD9E8D57)
    hi_a = tl.math.umulhi(c0, 0xD2511F53)
    return hi_b ^ c1 ^ k0, c2 * 0xCD9E8D57, hi_a ^ c3 ^ k1, c0 * 0xD2511F53


@triton.jit
def philox4x32(c0, c1, c2, c3, seed):
    """Philox-4x32-10 of uint32 counter blocks under a 64-bit integer seed (key = low, high word).

    Bit-identical to reference.philox4x32 and to Triton's tl.randint4x(seed, ...) counter layout.
    """
    seed64 = tl.to_tensor(seed).to(tl.int64)
    k0 = (seed64 & 0xFFFFFFFF).to(tl.uint32)
    k1 = ((seed64 >> 32) & 0xFFFFFFFF).to(tl.uint32)
    for _ in tl.static_range(10):
        c0, c1, c2, c3 = _philox_round(c0, c1, c2, c3, k0, k1)
        k0 = k0 + 0x9E3779B9
        k1 = k1 + 0xBB67AE85
    return c0, c1, c2, c3


@triton.jit
def dropout_keep_tile(seed, rows, col_start, keep_threshold, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """(BLOCK_M, BLOCK_K) keep-mask for rows `rows` and columns col_start + [0, BLOCK_K).

    One Philox call yields 4 words, so four neighbouring columns share the counter (k // 4, m, 0, 0);
    the words are interleaved back to column order. col_start and BLOCK_K must be multiples of 4. The
    same rule is implemented in torch by reference.dropout_keep_mask.
    """
    groups = (col_start // 4 + tl.arange(0, BLOCK_K // 4)).to(tl.uint32)
    c0 = tl.broadcast_to(groups[None, :], (BLOCK_M, BLOCK_K // 4))
    c1 = tl.broadcast_to(rows.to(tl.uint32)[:, None], (BLOCK_M, BLOCK_K // 4))
    zero = tl.full((BLOCK_M, BLOCK_K // 4), 0, tl.uint32)
    r0, r1, r2, r3 = philox4x32(c0, c1, zero, zero, seed)
    # join(join(r0, r2), join(r1, r3)) has element order r0, r1, r2, r3 along its last two axes.
    words = tl.reshape(tl.join(tl.join(r0, r2), tl.join(r1, r3)), (BLOCK_M, BLOCK_K))
    # Keep when the top 24 bits clear the threshold (reference.DROPOUT_THRESHOLD_BITS).
    return (words >> 8).to(tl.int32) >= keep_threshold
