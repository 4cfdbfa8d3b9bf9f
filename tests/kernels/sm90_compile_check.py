"""Compile every Triton kernel for sm_90 (H100) without a GPU: front end, TTGIR, LLVM and ptxas.

The interpreter tests cannot catch errors that only the compiler sees (types, layouts, unsupported
ops), so test_compile_sm90.py runs this script in a fresh process without TRITON_INTERPRET.
Prints one line per kernel variant; exits non-zero on the first failure.
"""

from __future__ import annotations

import sys
from typing import Any

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from ltxdist_kernels import fused_lora_linear as lora
from ltxdist_kernels import qk_norm_rope as qk
from ltxdist_kernels._triton_utils import interpreting

TARGET = GPUTarget("cuda", 90, 32)
FLOAT_SCALARS = {"scale", "keep_scale", "eps"}


def signature(fn: Any, constexprs: dict, dtype: str, pointer_types: dict[str, str]) -> dict[str, str]:
    """Kernel signature: pointers of `dtype` unless overridden, float / 64-bit / 32-bit scalars."""
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = pointer_types.get(name, f"*{dtype}")
        elif name in FLOAT_SCALARS:
            sig[name] = "fp32"
        elif name == "seed":
            sig[name] = "i64"
        else:
            sig[name] = "i32"
    return sig


def build(
    label: str,
    fn: Any,
    constexprs: dict[str, Any],
    dtype: str = "bf16",
    num_warps: int = 8,
    **pointer_types: str,
) -> str:
    sig = signature(fn, constexprs, dtype, pointer_types)
    kernel = triton.compile(
        ASTSource(fn=fn, signature=sig, constexprs=constexprs),
        target=TARGET,
        options={"num_warps": num_warps, "num_stages": 3},
    )
    ptx = kernel.asm["ptx"]
    print(f"{label}: ok ({len(ptx)} bytes PTX, wgmma={'wgmma.mma_async' in ptx})", flush=True)
    return ptx


def main() -> None:
    assert not interpreting(), "run without TRITON_INTERPRET: interpreted kernels cannot be compiled"
    gemm = {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "BLOCK_R": 32, "GROUP_M": 8}
    ptx = build(
        "gemm_lora fwd bf16",
        lora._gemm_lora_kernel,
        {**gemm, "HAS_BIAS": True, "HAS_DROPOUT": False, "DOT_PRECISION": "tf32"},
    )
    assert "wgmma.mma_async" in ptx, "bf16 GEMM should use Hopper wgmma"
    build(
        "gemm_lora dx bf16 dropout",
        lora._gemm_lora_kernel,
        {**gemm, "BLOCK_R": 64, "HAS_BIAS": False, "HAS_DROPOUT": True, "DOT_PRECISION": "tf32"},
    )
    build(
        "gemm_lora fwd fp32 ieee",
        lora._gemm_lora_kernel,
        {**gemm, "BLOCK_N": 128, "HAS_BIAS": True, "HAS_DROPOUT": False, "DOT_PRECISION": "ieee"},
        dtype="fp32",
    )
    build(
        "lora_down bf16 dropout r128",
        lora._lora_down_kernel,
        {"BLOCK_M": 64, "BLOCK_K": 64, "BLOCK_R": 128, "HAS_DROPOUT": True, "DOT_PRECISION": "tf32"},
        num_warps=4,
    )
    build(
        "lora_wgrad bf16 dropout",
        lora._lora_wgrad_kernel,
        {"BLOCK_M": 64, "BLOCK_K": 64, "BLOCK_R": 32, "HAS_DROPOUT": True, "DOT_PRECISION": "tf32"},
        num_warps=4,
        out_ptr="*fp32",
    )
    build("keep_mask", lora._keep_mask_kernel, {"BLOCK_M": 16, "BLOCK_K": 32}, num_warps=4, out_ptr="*i8")
    build(
        "qk_norm_rope fwd bf16",
        qk._qk_norm_rope_fwd_kernel,
        {"HAS_ROPE": True, "HALF": 64, "BLOCK_C": 4096},
        rstd_ptr="*fp32",
    )
    build(
        "qk_norm_rope bwd bf16",
        qk._qk_norm_rope_bwd_kernel,
        {"HAS_ROPE": True, "COMPUTE_DW": True, "HALF": 32, "BLOCK_C": 2048},
        rstd_ptr="*fp32",
        dw_ptr="*fp32",
    )


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # one readable line for the test's assertion message
        print(f"FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise
