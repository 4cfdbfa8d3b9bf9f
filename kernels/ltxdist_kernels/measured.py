"""Measurements `model.kernels=auto` decides from, per GPU kind (see dispatch.py).

Each entry: one call shape, the median forward + backward milliseconds of EVERY path timed at it, and the
results file it was copied from. A path the entry did not time (e.g. the safe path) cannot be chosen
over: an entry without the safe path's time decides nothing. `benchmarks/kernels_bench.py` writes
entries in exactly this form under `dispatch_measurements` in its JSON results; copy them here from a
committed results file, never from an uncommitted run.

What the 2026-12-04 H200 run can decide: only q/k norm + RoPE at 10,752 tokens (the fused kernel 4.96x
ltx-core's ops). Its LoRA-linear rows timed the fused kernel against the eager formula that LoRALinear no
longer runs (it now runs the library-GEMM path, `addmm`, never timed on a GPU yet): no LoRA-linear
decision until a run times `addmm` too.
"""

from __future__ import annotations

from typing import Any

_H200_2026_12_04 = "benchmarks/results/kernels_1xh200_2026-12-04.json"

MEASURED: dict[str, list[dict[str, Any]]] = {
    "h200": [
        {
            "op": "qk_norm_rope",
            "tokens": 10752,
            "width_in": 4096,
            "width_out": 4096,
            "heads": 32,
            "dtype": "bfloat16",
            "ms": {"torch": 1.536, "triton": 0.310},
            "source": _H200_2026_12_04,
        },
    ],
}
