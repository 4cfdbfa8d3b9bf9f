"""FLOP count of one LTX-2.3 LoRA training step, for MFU and HFU.

What counts (2 FLOPs per multiply-add, matrix multiplications only):

- every Linear that runs once per token: the six attentions' q/k/v/gate/out projections and both
  feed-forwards of every transformer block, plus `patchify_proj` / `proj_out` and their audio twins;
- the attention core of every attention: `Q K^T` and `P V`, 4 * Tq * Tk * inner per sample.

Left out: norms, RoPE, activations, the gates' elementwise products, and the AdaLN timestep MLPs
(they run once per sample, not per token: under 1% of a 22B step at a few thousand tokens).

Forward FLOPs F: 2 * N * I * O per Linear applied to N tokens, 4 * Tq * Tk * inner per attention core.

Backward, LoRA on a frozen base (what makes this differ from the usual "6 N" rule):

- a frozen base Linear gets no weight gradient, only the input gradient: 1 x its forward
  (full fine-tuning would be 2 x);
- a LoRA adapter of rank r adds 2 * N * r * (I + O) forward and twice that backward (input and
  weight gradients of A and B);
- the attention core backward is 2 x its forward (dQ, dK, dV, dP);
- `patchify_proj` has no backward (its input is data).

So model FLOPs = 2 F_base + 3 F_lora (+ 3 F_attention_core), the numerator of MFU. Autograd skips a
few input gradients in front of the first adapter; the count ignores that, as the "6 N" rule does.

HFU counts what the hardware executes: with activation checkpointing a block's forward runs a second
time during backward. Per block, by its mode (parallel.activation_checkpointing): `full` repeats its
whole forward, `attention` all of it except the attention cores (kept), `off` nothing. So hardware
FLOPs = model FLOPs + share_full * F_blocks + share_attention * (F_blocks - F_block_cores), the shares
being the fractions of blocks in each mode (`recompute_shares` reads them from the model).

Token roles: `v` video tokens, `a` audio tokens, `vt` / `at` the video / audio text-context tokens.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

# Wrapper name segments that parallel wrappers may insert; FLOPs are keyed on the model's own names.
_WRAPPER_SEGMENTS = re.compile(r"(_orig_mod|_checkpoint_wrapped_module|_fsdp_wrapped_module)\.")
_BLOCK_RE = re.compile(r"^transformer_blocks\.(\d+)\.(.+)$")

# attention module -> (query role, key/value role)
ATTENTION_ROLES: dict[str, tuple[str, str]] = {
    "attn1": ("v", "v"),
    "attn2": ("v", "vt"),
    "audio_attn1": ("a", "a"),
    "audio_attn2": ("a", "at"),
    "audio_to_video_attn": ("v", "a"),
    "video_to_audio_attn": ("a", "v"),
}
_QUERY_SIDE = ("to_q", "to_gate_logits", "to_out.0")  # run on the query tokens
_KV_SIDE = ("to_k", "to_v")  # run on the key/value tokens
_TOP_LEVEL: dict[str, tuple[str, bool]] = {  # name -> (role, has a backward)
    "patchify_proj": ("v", False),
    "proj_out": ("v", True),
    "audio_patchify_proj": ("a", False),
    "audio_proj_out": ("a", True),
}


@dataclass(frozen=True)
class LinearTerm:
    name: str
    role: str  # which tokens it runs on
    runs_if: frozenset[str]  # roles that must be present for the module to run at all
    in_features: int
    out_features: int
    lora_rank: int  # 0: no adapter
    has_backward: bool
    in_block: bool


@dataclass(frozen=True)
class AttentionTerm:
    name: str
    query_role: str
    key_role: str
    inner: int  # heads * head_dim of the attention product


@dataclass(frozen=True)
class StepFlops:
    forward: float  # F: everything counted, one forward
    model: float  # forward + backward: the MFU numerator
    hardware: float  # model + recomputed forwards: the HFU numerator

    def __add__(self, other: StepFlops) -> StepFlops:
        return StepFlops(
            self.forward + other.forward, self.model + other.model, self.hardware + other.hardware
        )


ZERO = StepFlops(0.0, 0.0, 0.0)


def _clean(name: str) -> str:
    return _WRAPPER_SEGMENTS.sub("", name)


def _linear_term(name: str, module: torch.nn.Linear) -> LinearTerm | None:
    rank = int(getattr(module, "rank", 0))  # LoRALinear carries its rank
    if name in _TOP_LEVEL:
        role, backward = _TOP_LEVEL[name]
        return LinearTerm(
            name, role, frozenset({role}), module.in_features, module.out_features, rank, backward, False
        )
    m = _BLOCK_RE.match(name)
    if m is None:
        return None  # AdaLN timestep MLPs and other per-sample layers: not counted (see module docstring)
    inner = m.group(2)
    attn, _, leaf = inner.partition(".")
    if attn in ATTENTION_ROLES:
        q_role, kv_role = ATTENTION_ROLES[attn]
        if leaf in _QUERY_SIDE:
            role = q_role
        elif leaf in _KV_SIDE:
            role = kv_role
        else:
            raise ValueError(f"FLOP count: no token role for Linear {name}")
        runs_if = frozenset({q_role, kv_role})
    elif attn in ("ff", "audio_ff"):
        role = "v" if attn == "ff" else "a"
        runs_if = frozenset({role})
    else:
        raise ValueError(f"FLOP count: no token role for Linear {name}")
    return LinearTerm(name, role, runs_if, module.in_features, module.out_features, rank, True, True)


@dataclass(frozen=True)
class FlopModel:
    """The countable structure of one LTX transformer (read once from the model)."""

    linears: tuple[LinearTerm, ...]
    attentions: tuple[AttentionTerm, ...]

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> FlopModel:
        linears: list[LinearTerm] = []
        attentions: list[AttentionTerm] = []
        for raw_name, module in model.named_modules():
            name = _clean(raw_name)
            if isinstance(module, torch.nn.Linear):
                term = _linear_term(name, module)
                if term is not None:
                    linears.append(term)
                continue
            m = _BLOCK_RE.match(name)
            if m and m.group(2) in ATTENTION_ROLES and hasattr(module, "to_q"):
                q_role, kv_role = ATTENTION_ROLES[m.group(2)]
                attentions.append(AttentionTerm(name, q_role, kv_role, int(module.to_q.out_features)))
        if not attentions:
            raise ValueError("FLOP count: the model has no LTX transformer blocks")
        return cls(tuple(linears), tuple(attentions))

    def step(
        self,
        *,
        batch: int,
        tokens: dict[str, int],
        activation_checkpointing: bool = False,
        recompute: Mapping[str, float] | None = None,
    ) -> StepFlops:
        """FLOPs of one forward + backward over `batch` samples with `tokens[role]` tokens each
        (roles v, a, vt, at; a missing role means that stream is absent). `recompute`: the fraction of
        blocks per checkpointing mode ("full", "attention"; `recompute_shares`);
        `activation_checkpointing=True` is every block `full`."""
        shares = dict(recompute or {})
        if activation_checkpointing:
            shares = {"full": 1.0}

        def present(roles: frozenset[str]) -> bool:
            return all(tokens.get(r, 0) > 0 for r in roles)

        forward = model = block_forward = block_cores = 0.0
        for t in self.linears:
            if not present(t.runs_if):
                continue
            n = batch * tokens[t.role]
            base = 2.0 * n * t.in_features * t.out_features
            lora = 2.0 * n * t.lora_rank * (t.in_features + t.out_features)
            forward += base + lora
            model += base + lora + (base + 2.0 * lora if t.has_backward else 0.0)
            block_forward += (base + lora) if t.in_block else 0.0
        for a in self.attentions:
            roles = frozenset({a.query_role, a.key_role})
            if not present(roles):
                continue
            core = 4.0 * batch * tokens[a.query_role] * tokens[a.key_role] * a.inner
            forward += core
            model += 3.0 * core
            block_forward += core
            block_cores += core  # every attention is inside a block
        recomputed = shares.get("full", 0.0) * block_forward
        recomputed += shares.get("attention", 0.0) * (block_forward - block_cores)
        hardware = model + recomputed
        return StepFlops(forward=forward, model=model, hardware=hardware)


def recompute_shares(model: torch.nn.Module) -> dict[str, float]:
    """The fraction of the transformer's blocks per checkpointing mode that its next training forward
    runs with, as applied by ltxdist.parallel.activation_checkpointing: per block (attention, every_k,
    budget: its planner, whose modes a budget plan sets per step before the blocks run), or ltx-core's
    own switch for `full`. {} when nothing is recomputed."""
    planner = model.__dict__.get("ltxdist_ac_planner")
    if planner is not None and planner.modes:
        n = len(planner.modes)
        return {
            mode: planner.modes.count(mode) / n for mode in ("full", "attention") if mode in planner.modes
        }
    if getattr(model, "_enable_gradient_checkpointing", False):
        return {"full": 1.0}
    return {}


def tokens_of_forward(video: Any, audio: Any) -> tuple[int, dict[str, int]]:
    """(batch, tokens per role) of one `LTXModel.forward(video, audio, ...)` call (Modality inputs)."""
    tokens: dict[str, int] = {}
    batch = 0
    for modality, role, text_role in ((video, "v", "vt"), (audio, "a", "at")):
        if modality is None or not getattr(modality, "enabled", True):
            continue
        batch = int(modality.latent.shape[0])
        tokens[role] = int(modality.latent.shape[1])
        tokens[text_role] = int(modality.context.shape[1])
    return batch, tokens


# Dense bf16 tensor-core peaks per GPU (vendor datasheets, TFLOP/s); MFU is reported against these.
PEAK_BF16_TFLOPS: dict[str, float] = {
    "H200": 989.4,
    "H100 SXM": 989.4,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 989.4,  # HBM3 H100 reports as "NVIDIA H100 80GB HBM3": the SXM part
    "A100": 312.0,
    "L40S": 362.1,
    "A10G": 70.0,
    "B200": 2250.0,
}


def peak_flops_per_device(device: torch.device, override_tflops: float | None = None) -> float | None:
    """Peak FLOP/s of one device, or None when unknown (CPU, unlisted GPU): MFU is then not reported.
    `override_tflops` (env LTXDIST_PEAK_TFLOPS) wins."""
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):  # most specific first
        if key in name:
            return PEAK_BF16_TFLOPS[key] * 1e12
    return None
