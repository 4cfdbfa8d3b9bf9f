"""Optional torch.compile of each transformer block (`parallel.compile`).

Per block, not the whole model: the 48 blocks are identical, so their compiled graphs are shared (dynamo
inlines module parameters as graph inputs), and FSDP2's per-block hooks stay outside the compiled
region. `Module.compile` compiles in place, keeping parameter names (no `_orig_mod.` prefix), so
checkpoints and the LoRA export see the same keys with and without compile.

What dynamo does with a block (benchmarks/compile_bench.py, tiny model on CPU; the same code at 22B):
  * no graph break in a block (ltx-core's forward, LoRALinear's autograd function, the masks);
  * two graphs per input shape, inherent: block 0's hidden states do not require grad (they come from
    the frozen patchify projection), the other blocks' do, and dynamo guards on requires_grad;
  * a new token count (another bucket) recompiles once with symbolic shapes, then no more;
  * one avoidable recompile of every graph on the second step: ltx-core's `AttentionFunction.PYTORCH`
    instantiates a typing.Protocol class per call, which rewrites the class __dict__ on first use, and
    dynamo guards on that dict. `use_plain_sdpa` swaps in the same arithmetic as a plain function.
"""

from __future__ import annotations

from typing import Any

import torch

from ltxdist_kernels.sdpa import use_plain_sdpa


def apply_compile(model: torch.nn.Module, **compile_options: Any) -> None:
    """Compile every block in place; `compile_options` go to `torch.compile` (benchmarks pass a backend)."""
    use_plain_sdpa(model)
    for block in model.transformer_blocks:
        block.compile(**compile_options)
