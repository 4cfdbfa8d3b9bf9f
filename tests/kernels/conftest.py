"""Kernel tests: on a GPU the kernels run compiled; without one, through Triton's interpreter.

Triton chooses interpreted or compiled kernels when a kernel function is decorated, i.e. when the
ltxdist_kernels modules are imported. Without CUDA we set TRITON_INTERPRET=1 and (re)import those
modules right here, before any test module of this folder imports them. The variable stays set for
the session: Triton's interpreter imports parts of triton lazily at launch and checks it then. (On a
CPU-only machine nothing else in the suite runs Triton kernels.) The interpreter's bf16 tl.dot is
wrong, so CPU tests run in fp32; bf16 tests are marked `gpu` and skipped without CUDA.
On a GPU the kernels run with fixed tile configs (LTXDIST_TRITON_AUTOTUNE=0), so the bf16 tests compile
each kernel variant once instead of once per autotuning config and shape.
"""

from __future__ import annotations

import importlib
import os
import sys

import torch

# Dependency order: each module binds names of the ones before it at import.
_KERNEL_MODULES = (
    "ltxdist_kernels._triton_utils",
    "ltxdist_kernels.fused_lora_linear",
    "ltxdist_kernels.qk_norm_rope",
    "ltxdist_kernels.attention",
)


def _import_kernels(interpret: bool) -> None:
    utils = sys.modules.get(_KERNEL_MODULES[0])
    stale = utils is not None and utils.interpreting() != interpret
    if interpret:
        os.environ["TRITON_INTERPRET"] = "1"
    for name in _KERNEL_MODULES:
        module = sys.modules.get(name)
        if module is None:
            importlib.import_module(name)
        elif stale:
            importlib.reload(module)


_import_kernels(interpret=not torch.cuda.is_available())
# On a GPU: one fixed tile config per kernel instead of autotuning every test shape (each autotuned shape
# compiles every config: minutes on a fresh machine). Numerics do not depend on the tile config.
os.environ.setdefault("LTXDIST_TRITON_AUTOTUNE", "0")
