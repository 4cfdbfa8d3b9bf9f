"""LoRA linear layer that keeps the base parameter names (`weight`, `bias`) of the Linear it wraps.

Keeping the names means a LoRA-injected model still loads base checkpoints (and shards with FSDP)
under the original keys; the adapter adds only `lora_A` (r, in) and `lora_B` (out, r). The forward runs
`linear_ops.lora_linear`: the frozen GEMM with the adapter accumulated into its output (and into the
input gradient), no extra pass over the activations.
"""

from __future__ import annotations

import math

import torch

from ltxdist.lora.linear_ops import lora_linear
from ltxdist.quant.formats import is_quantized_dtype
from ltxdist.quant.matmul import dequantized_weight, fp8_matmul_fits, frozen_linear


class LoRALinear(torch.nn.Linear):
    """y = x W^T + b + scaling * (dropout(x) A^T) B^T, with W and b frozen."""

    def __init__(self, base: torch.nn.Linear, rank: int, alpha: float, dropout: float, dtype: torch.dtype):
        # Bypass nn.Linear.__init__ (it would allocate a new weight); adopt the base parameters instead.
        torch.nn.Module.__init__(self)
        if rank < 1:
            raise ValueError(f"lora.rank must be >= 1, got {rank}")
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.rank = rank
        self.alpha = float(alpha)
        self.scaling = self.alpha / rank
        self.dropout_p = float(dropout)
        device = base.weight.device
        self.lora_A = torch.nn.Parameter(torch.empty(rank, self.in_features, device=device, dtype=dtype))
        self.lora_B = torch.nn.Parameter(torch.empty(self.out_features, rank, device=device, dtype=dtype))
        if device.type != "meta":
            self.reset_lora_parameters()

    @torch.no_grad()
    def reset_lora_parameters(self, generator: torch.Generator | None = None) -> None:
        # A like nn.Linear's default (kaiming-uniform, a=sqrt(5)); B zero so training starts at the base.
        bound = 1.0 / math.sqrt(self.in_features)
        a = torch.empty(self.lora_A.shape, dtype=torch.float32).uniform_(-bound, bound, generator=generator)
        self.lora_A.copy_(a.to(self.lora_A.device))
        self.lora_B.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dropout_p = self.dropout_p if self.training else 0.0
        scale = None
        if is_quantized_dtype(self.weight.dtype):
            if getattr(self, "fp8_matmul", False) and fp8_matmul_fits(x, self.weight):
                # fp8 scaled-mm (ltxdist.quant.matmul) writes a new output: the adapter is added beside it.
                return frozen_linear(self, x) + self.lora_delta(x)
            scale = self.weight_scale  # an 8-bit base: up-cast inside the in-place LoRA GEMMs
        return lora_linear(
            x, self.weight, self.bias, self.lora_A, self.lora_B, self.scaling, dropout_p, weight_scale=scale
        )

    def lora_delta(self, x: torch.Tensor) -> torch.Tensor:
        """scaling * (dropout(x) A^T) B^T in x's dtype (the eager adapter, beside a quantized base)."""
        if self.training and self.dropout_p > 0:
            x = torch.nn.functional.dropout(x, p=self.dropout_p)
        return (
            torch.nn.functional.linear(
                torch.nn.functional.linear(x, self.lora_A.to(x.dtype)), self.lora_B.to(x.dtype)
            )
            * self.scaling
        )

    @torch.no_grad()
    def merged_weight(self, strength: float = 1.0) -> torch.Tensor:
        delta = (self.lora_B.float() @ self.lora_A.float()) * (self.scaling * strength)
        # An 8-bit base (ltxdist.quant) is read back to float32; the merged weight is then bf16.
        base = dequantized_weight(self, torch.float32)
        out_dtype = torch.bfloat16 if is_quantized_dtype(self.weight.dtype) else self.weight.dtype
        return (base + delta).to(out_dtype)

    def to_linear(self) -> torch.nn.Linear:
        """A plain Linear with the adapter merged in."""
        linear = torch.nn.Linear(
            self.in_features, self.out_features, bias=self.bias is not None, device="meta"
        )
        linear.weight = torch.nn.Parameter(self.merged_weight(), requires_grad=False)
        if self.bias is not None:
            linear.bias = torch.nn.Parameter(self.bias.detach().clone(), requires_grad=False)
        return linear

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, rank={self.rank}, alpha={self.alpha}, "
            f"dropout={self.dropout_p}"
        )
