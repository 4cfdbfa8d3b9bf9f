"""Activation checkpointing per transformer block, by mode or by memory budget (`parallel.*` flags).

Modes (`parallel.activation_checkpointing`):
  off        nothing recomputed
  full       every block recomputed in backward (ltx-core's own non-reentrant switch)
  attention  every block recomputed EXCEPT its attention cores: the SDPA outputs (and log-sum-exp) are
             kept, everything else (projections, norms, RoPE, feed-forward) recomputed. Costs little
             more memory than full (one output per attention) and saves the quadratic part of the
             recompute, the larger share the longer the clip.
  every_k    every k-th block fully recomputed (`parallel.activation_checkpointing_every`), the others
             not at all
  budget     per step, from the step's own token counts: the mix of off / attention / full blocks with
             the least recompute whose predicted peak (activation_memory.py, validated against the
             H200 peaks) fits `parallel.memory_budget_gib` (with the allocator's overhead)
  auto       budget when `parallel.memory_budget_gib` is set, else full or off by
             `model.gradient_checkpointing`

Blocks swapped from host memory (`model.offload_blocks`, parallel/offload.py) are always fully
recomputed, whatever the mode says for other blocks (Planner.require_recompute); `off` itself is refused
with block swap (config/schema.py).

The non-full modes wrap each block's forward in place (an instance attribute, so parameter names,
FSDP2 units and `Module.compile` see the same module tree); the decision for each block is taken in
its forward, so the recompute in backward re-runs exactly what the forward ran.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from ltxdist.parallel.activation_memory import (
    ALLOCATOR_OVERHEAD,
    SDPA_OPS,
    BlockMemory,
    gradient_bytes,
    one_block_template,
    predicted_peak_bytes,
    resident_bytes,
    to_gib,
    trace_block_memory,
)
from ltxdist.parallel.offload import SWAP_HOOKS

MODES = ("auto", "off", "full", "attention", "every_k", "budget")
_BLOCK_MODES = ("off", "attention", "full")


class MemoryBudgetError(ValueError):
    """Even full checkpointing does not fit `parallel.memory_budget_gib`."""


@dataclass(frozen=True)
class CheckpointingPolicy:
    mode: str  # off | full | attention | every_k | budget (auto resolved)
    every: int = 2
    budget_gib: float | None = None


def checkpointing_policy(parallel_cfg: Any, *, gradient_checkpointing: bool) -> CheckpointingPolicy:
    """Resolve the `parallel.activation_checkpointing*` / `memory_budget_gib` flags (auto included)."""
    mode = getattr(parallel_cfg, "activation_checkpointing", "auto")
    budget = getattr(parallel_cfg, "memory_budget_gib", None)
    every = int(getattr(parallel_cfg, "activation_checkpointing_every", 2))
    if mode not in MODES:
        raise ValueError(f"parallel.activation_checkpointing must be one of {MODES}, got {mode!r}")
    if mode == "auto":
        mode = "budget" if budget is not None else ("full" if gradient_checkpointing else "off")
    if mode == "budget" and (budget is None or budget <= 0):
        raise ValueError("parallel.activation_checkpointing=budget needs parallel.memory_budget_gib > 0")
    if mode == "every_k" and every < 1:
        raise ValueError(f"parallel.activation_checkpointing_every must be >= 1, got {every}")
    return CheckpointingPolicy(mode, every, budget)


# -- the plan of one step ----------------------------------------------------------------------------
def block_recompute_flops(template: torch.nn.Module, video: Any, audio: Any) -> dict[str, float]:
    """Forward FLOPs one block repeats in backward, per mode (tracking/flops.py's count)."""
    from ltxdist.tracking.flops import FlopModel, tokens_of_forward

    flops = FlopModel.from_model(template)
    batch, tokens = tokens_of_forward(video, audio)
    block = (
        flops.step(batch=batch, tokens=tokens, activation_checkpointing=True).hardware
        - flops.step(batch=batch, tokens=tokens).hardware
    )
    cores = sum(
        4.0 * batch * tokens[a.query_role] * tokens[a.key_role] * a.inner
        for a in flops.attentions
        if tokens.get(a.query_role, 0) > 0 and tokens.get(a.key_role, 0) > 0
    )
    return {"off": 0.0, "attention": block - cores, "full": block}


def plan_for_budget(
    memory: BlockMemory,
    blocks: int,
    resident: int,
    budget_bytes: float,
    recompute: dict[str, float],
    gradients: int = 0,
    recomputed: int = 0,
) -> dict[str, int]:
    """Blocks per mode with the least recompute whose peak (with allocator overhead) fits the budget;
    `gradients`: bytes of the adapters' gradients (predicted_peak_bytes); `recomputed`: how many blocks
    must be `full` (the swapped ones, Planner.require_recompute)."""
    best: tuple[float, int, dict[str, int]] | None = None
    for full in range(recomputed, blocks + 1):
        for attention in range(blocks + 1 - full):
            counts = {"off": blocks - full - attention, "attention": attention, "full": full}
            peak = predicted_peak_bytes(memory, counts, resident, gradients)
            if peak * ALLOCATOR_OVERHEAD > budget_bytes:
                continue
            cost = attention * recompute["attention"] + full * recompute["full"]
            if best is None or (cost, peak) < best[:2]:
                best = (cost, peak, counts)
    if best is None:
        least = predicted_peak_bytes(memory, {"full": blocks}, resident, gradients) * ALLOCATOR_OVERHEAD
        raise MemoryBudgetError(
            f"parallel.memory_budget_gib={to_gib(budget_bytes):.1f}: even checkpointing every block needs "
            f"about {to_gib(least):.1f} GiB here ({to_gib(resident):.1f} GiB weights, adapters and optimizer "
            "state); raise the budget, shard the base (parallel=fsdp2 / deepspeed_zero3), use "
            "parallel.sequence_parallel, or train on shorter clips"
        )
    return best[2]


def block_modes(counts: dict[str, int], swapped: frozenset[int] = frozenset()) -> list[str]:
    """One mode per block: fully checkpointed blocks first, then attention-selective, then none; the
    `swapped` blocks take the `full` ones before the others do (counts["full"] leaves them room)."""
    blocks = sum(counts.values())
    order = sorted(range(blocks), key=lambda i: (i not in swapped, i))
    ranked = (
        ["full"] * counts.get("full", 0)
        + ["attention"] * counts.get("attention", 0)
        + (["off"] * counts.get("off", 0))
    )
    modes = [""] * blocks
    for index, mode in zip(order, ranked, strict=True):
        modes[index] = mode
    return modes


@dataclass
class Planner:
    """Decides each block's mode; for `budget`, once per distinct input shape of the model."""

    policy: CheckpointingPolicy
    blocks: int
    template: torch.nn.Module | None = None  # one-block meta copy (budget)
    modes: list[str] = field(default_factory=list)
    _plans: dict[tuple, list[str]] = field(default_factory=dict)
    last_counts: dict[str, int] = field(default_factory=dict)
    last_memory: BlockMemory | None = None
    # Block swap (parallel/offload.py): the swapped blocks, and the bytes of their device copies in flight.
    swapped: frozenset[int] = frozenset()
    swapped_in_flight_bytes: int = 0

    def __post_init__(self) -> None:
        if self.policy.mode == "every_k":
            self.modes = ["full" if i % self.policy.every == 0 else "off" for i in range(self.blocks)]
        elif self.policy.mode in _BLOCK_MODES:
            self.modes = [self.policy.mode] * self.blocks
        else:
            self.modes = ["full"] * self.blocks  # budget: until the first step is planned
        self.modes = ["full" if i in self.swapped else mode for i, mode in enumerate(self.modes)]

    def require_recompute(self, swapped: list[int], in_flight_bytes: int) -> None:
        """Swapped blocks are always `full`. Why forced recompute, rather than counting a swapped block's
        weights as resident when the budget plan leaves it off: an `off` block's frozen weights stay on
        the device until its backward (autograd saves them for the input gradient), so a swapped block
        left off holds its weights and all its activations and is copied for nothing, while the same
        `off` slot given to a resident block costs its activations only (its weights are there anyway):
        at the same recompute cost, recomputing the swapped blocks always needs less memory. `full`, not
        `attention`: the selective recompute replays only the ops its forward recorded, and the swap's
        weight copy in the recompute is not one of them (torch refuses it)."""
        self.swapped, self.swapped_in_flight_bytes = frozenset(swapped), in_flight_bytes
        self._plans.clear()
        self.__post_init__()

    def mode(self, index: int) -> str:
        return self.modes[index]

    def resident(self, model: torch.nn.Module) -> int:
        """resident_bytes (without the swapped blocks' weights, which are on the host), plus the swapped
        blocks' device copies in flight, plus the two whole blocks FSDP2 holds gathered (the running one,
        the prefetched next) when the parameters are sharded."""
        total = resident_bytes(model) + self.swapped_in_flight_bytes
        if self.template is not None and any(hasattr(p, "to_local") for p in model.parameters()):
            block = self.template.transformer_blocks[0]
            total += 2 * sum(p.numel() * p.element_size() for p in block.parameters())
        return total

    def plan(self, model: torch.nn.Module, video: Any, audio: Any, perturbations: Any) -> list[str]:
        """Set this step's modes from its input shapes (budget); cached per shape."""
        if self.policy.mode != "budget":
            return self.modes
        key = tuple(
            (tuple(m.latent.shape), tuple(m.context.shape), m.latent.dtype) if m is not None else None
            for m in (video, audio)
        )
        if key not in self._plans:
            assert self.template is not None
            memory = trace_block_memory(self.template, video, audio, perturbations)
            recompute = block_recompute_flops(self.template, video, audio)
            budget = self.policy.budget_gib * 2**30
            counts = plan_for_budget(
                memory,
                self.blocks,
                self.resident(model),
                budget,
                recompute,
                gradient_bytes(model),
                recomputed=len(self.swapped),
            )
            self._plans[key] = block_modes(counts, self.swapped)
            self.last_memory, self.last_counts = memory, counts
        self.modes = self._plans[key]
        return self.modes


# -- applying it ------------------------------------------------------------------------------------
@functools.cache
def _sdpa_ops() -> frozenset:
    names = (op.removeprefix("aten::") for op in SDPA_OPS)  # the memory model's list of SDPA ops
    return frozenset(getattr(torch.ops.aten, n).default for n in names if hasattr(torch.ops.aten, n))


def _keep_attention_outputs(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _sdpa_ops() else CheckpointPolicy.PREFER_RECOMPUTE


def _attention_contexts():
    return create_selective_checkpoint_contexts(_keep_attention_outputs)


class _CheckpointedForward:
    """A block's forward with its planned checkpointing (an object, not a closure, so that deep copies of
    the model get a forward bound to the copied block and planner)."""

    def __init__(self, block: torch.nn.Module, index: int, planner: Planner):
        self.block, self.index, self.planner = block, index, planner

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        block = self.block
        forward = type(block).forward.__get__(block)
        mode = self.planner.mode(self.index) if block.training and torch.is_grad_enabled() else "off"
        if mode == "off":
            return forward(*args, **kwargs)
        extra = {"context_fn": _attention_contexts} if mode == "attention" else {}
        return checkpoint(_Recomputable(block, forward), *args, use_reentrant=False, **extra, **kwargs)


class _Recomputable:
    """A block's plain forward for `checkpoint`. Its first run is inside the block's module call, whose
    hooks ran around it; a later run is the recompute in backward, outside any module call, so block
    swap's hooks (parallel/offload.py: copy the block's weights to the device, drop them after) run around
    it here, as they do when ltx-core's full mode checkpoints the whole module call."""

    def __init__(self, block: torch.nn.Module, forward: Any):
        self.block, self.forward, self.runs = block, forward, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.runs += 1
        swap_hooks = self.block.__dict__.get(SWAP_HOOKS)
        if self.runs == 1 or swap_hooks is None:
            return self.forward(*args, **kwargs)
        before, after = swap_hooks
        before(self.block, args)
        try:
            return self.forward(*args, **kwargs)
        finally:
            after(self.block, args, None)


class _PlanStep:
    """Forward pre-hook of the model: plans the step's blocks from its inputs (budget mode)."""

    def __init__(self, planner: Planner):
        self.planner = planner

    def __call__(self, model: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if model.training and torch.is_grad_enabled():
            values = {**dict(zip(("video", "audio", "perturbations"), args, strict=False)), **kwargs}
            self.planner.plan(model, values.get("video"), values.get("audio"), values.get("perturbations"))


def remove_activation_checkpointing(model: torch.nn.Module) -> None:
    """Back to plain blocks (benchmarks switch modes on one model)."""
    model.set_gradient_checkpointing(False)
    for block in model.transformer_blocks:
        block.__dict__.pop("forward", None)
    handle = model.__dict__.pop("_ltxdist_ac_hook", None)
    if handle is not None:
        handle.remove()
    model.__dict__.pop("ltxdist_ac_planner", None)


def apply_activation_checkpointing(model: torch.nn.Module, policy: CheckpointingPolicy | None = None) -> None:
    """Checkpoint the transformer's blocks as `policy` says (default: full). Apply before compile and
    sharding (parallel/apply.py); for `budget`, while the model is still whole (before FSDP2)."""
    policy = policy or CheckpointingPolicy("full")
    remove_activation_checkpointing(model)
    if policy.mode == "off":
        return
    if policy.mode == "full":
        # LTXModel checkpoints each block in training mode when this flag is set; using its switch keeps
        # block inputs (dataclasses of tensors) handled the way ltx-core expects.
        model.set_gradient_checkpointing(True)
        return
    blocks = len(model.transformer_blocks)
    template = one_block_template(model) if policy.mode == "budget" else None
    planner = Planner(policy, blocks, template=template)
    for index, block in enumerate(model.transformer_blocks):
        block.forward = _CheckpointedForward(block, index, planner)
    if policy.mode == "budget":
        model.__dict__["_ltxdist_ac_hook"] = model.register_forward_pre_hook(
            _PlanStep(planner), with_kwargs=True
        )
    model.__dict__["ltxdist_ac_planner"] = planner


def require_recompute(model: torch.nn.Module, swapped: list[int], in_flight_bytes: int) -> None:
    """Make sure the `swapped` blocks (block swap, parallel/offload.py) are recomputed in backward: without
    that autograd keeps each swapped block's device copy until backward and swapping saves nothing.
    `in_flight_bytes`: their device copies alive at once, which the budget planner counts as resident."""
    if not swapped:
        return
    planner = model.__dict__.get("ltxdist_ac_planner")
    if planner is not None:  # every_k, attention, budget
        planner.require_recompute(swapped, in_flight_bytes)
    elif not getattr(model, "_enable_gradient_checkpointing", False):  # ltx-core's switch: full
        raise ValueError(
            "model.offload_blocks: the swapped blocks must be recomputed in backward; set "
            "parallel.activation_checkpointing to anything but off (or model.gradient_checkpointing=true)"
        )
