"""Ulysses sequence parallelism for the LTX-2.3 transformer, applied from outside ltx-core's model code.

A sequence-parallel (SP) group of P consecutive ranks trains the same samples together. Each rank
holds 1/P of the video tokens and 1/P of the audio tokens (padded to a multiple of P), so everything
per token (patchify, AdaLN, RoPE tables, q/k norm, feed-forward, LoRA projections) runs on 1/P of the
sequence. Only attention needs the whole sequence, and it gets it through ltx-core's per-module
`attention_function` seam:

* self-attention (`attn1`, `audio_attn1`) and cross-modal attention (`audio_to_video_attn`,
  `video_to_audio_attn`): an all-to-all turns (local tokens, all heads) into (all tokens, H/P heads)
  for q, k and v; attention runs on whole sequences for this rank's heads; a second all-to-all turns
  the output back into (local tokens, all heads). Queries and keys may come from different streams of
  different lengths (video queries, audio keys).
* text cross-attention (`attn2`, `audio_attn2`): the text context is replicated on every rank, so each
  rank attends with its own query tokens and nothing is exchanged.

The model's outputs are gathered again for the loss. Every rank of a group computes the same loss from
the same gathered prediction, so the gather's backward hands each rank the gradient of its own tokens
only; the parameter gradients of the ranks of a group then SUM to the full gradient. Data-parallel
reduction (DDP, FSDP2, DeepSpeed) AVERAGES over all ranks, i.e. over data-parallel groups and over the
P ranks of each group: `loss_scale()` (= P) undoes that extra 1/P, so every parallel layout composes
with sequence parallelism without a second process group for gradients.

Padding: a stream of T tokens is padded to T_pad = P * ceil(T / P) with copies of its last position,
zero latents and zero timesteps; padding keys are masked out of every attention that gathers the whole
sequence, and padding query rows are dropped when the prediction is gathered.

Not supported (refused with an error): a dense `Modality.attention_mask` (ltxdist's strategies use key
and query masks instead), head counts not divisible by P. LoRA dropout draws its masks per rank, so
with `lora.dropout > 0` a sequence-parallel run is statistically, not bitwise, equivalent to one
process.

Shape legend: B batch, T full tokens, L = T_pad / P local tokens, H heads, D head dim, C = H * D,
P group size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from ltxdist.strategies.attention_masks import install_maskable_attention, set_attention_masks

if TYPE_CHECKING:
    from ltxdist._ltx_core import Modality
    from ltxdist.parallel.dims import ParallelMesh
    from ltxdist.strategies.base import StrategyOutput

# Attention modules whose queries AND keys are token streams split across the group:
# {module name: (query stream, key stream)}.
ULYSSES_MODULES: dict[str, tuple[str, str]] = {
    "attn1": ("video", "video"),
    "audio_attn1": ("audio", "audio"),
    "audio_to_video_attn": ("video", "audio"),
    "video_to_audio_attn": ("audio", "video"),
}
# Text cross-attention: local queries, replicated text keys. {module name: query stream}
LOCAL_QUERY_MODULES: dict[str, str] = {"attn2": "video", "audio_attn2": "audio"}


def check_heads_divisible(model: torch.nn.Module, sequence_parallel: int) -> None:
    """Ulysses splits heads across the group: every attention that exchanges tokens needs H % P == 0."""
    for block in model.transformer_blocks:
        for name in ULYSSES_MODULES:
            attn = getattr(block, name, None)
            if attn is not None and attn.heads % sequence_parallel:
                raise ValueError(
                    f"parallel.sequence_parallel={sequence_parallel} must divide the number of attention "
                    f"heads, but {name} has {attn.heads} (LTX-2.3: 32 heads, so 2, 4, 8, 16 or 32)"
                )
        return  # every block has the same heads


@dataclass(eq=False)
class SequenceParallelGroup:
    """The process group of this rank's sequence-parallel group, and whether exchanging is on.

    `active` is switched on for the training forward (and stays on through the backward, where
    activation checkpointing re-runs the forward) and off for anything that runs the transformer on
    whole sequences per rank (validation sampling).
    """

    group: Any
    size: int
    rank: int
    active: bool = False

    @property
    def loss_scale(self) -> float:
        """Factor on the loss before backward: the data-parallel average also divides by P (see top)."""
        return float(self.size)

    @contextmanager
    def exchanging(self, on: bool) -> Iterator[None]:
        before, self.active = self.active, on
        try:
            yield
        finally:
            self.active = before


def sequence_parallel_group(mesh: ParallelMesh) -> SequenceParallelGroup:
    """This rank's group: the layout mesh's `sp` dim, consecutive ranks (inside one node when P divides
    the GPUs per node: the all-to-alls stay on NVLink)."""
    size = mesh.dims.sequence
    if mesh.sequence is None:
        raise RuntimeError(
            f"parallel.sequence_parallel={size} needs a distributed launch (torchrun / launch/train.sh with "
            "parallel=ddp|fsdp2|hsdp|deepspeed_*)"
        )
    return SequenceParallelGroup(group=mesh.sequence_group(), size=size, rank=mesh.sequence_rank)


# -- collectives with autograd ----------------------------------------------------------------------
def _all_to_all_dim0(x: torch.Tensor, group: Any) -> torch.Tensor:
    # Both buffers contiguous: the collective reads and writes raw memory in dim-0-major order (an
    # empty_like of a permuted view would keep the view's strides).
    x = x.contiguous()
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    dist.all_to_all_single(out, x, group=group)
    return out


class _AllToAll(torch.autograd.Function):
    """Send chunk p of dim 0 to rank p, receive rank p's chunk as chunk p. This exchange is its own
    adjoint: the backward sends each gradient chunk back the way its value came."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        return _all_to_all_dim0(x, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _all_to_all_dim0(grad, ctx.group), None


def sequence_to_heads(x_BLC: torch.Tensor, heads: int, sp: SequenceParallelGroup) -> torch.Tensor:
    """(B, L, H*D) local tokens, all heads -> (B, P*L, H/P*D) all tokens, this rank's heads."""
    P = sp.size
    B, L, C = x_BLC.shape
    D, Hp = C // heads, heads // P
    # chunk p = head group p, for rank p
    x_PBLhD = x_BLC.view(B, L, P, Hp, D).permute(2, 0, 1, 3, 4)
    # chunk p = rank p's tokens, our head group
    y_PBLhD = _AllToAll.apply(x_PBLhD, sp.group)
    return y_PBLhD.permute(1, 0, 2, 3, 4).reshape(B, P * L, Hp * D)


def heads_to_sequence(y_BTc: torch.Tensor, heads: int, sp: SequenceParallelGroup) -> torch.Tensor:
    """Inverse of `sequence_to_heads`: (B, P*L, H/P*D) -> (B, L, H*D)."""
    P = sp.size
    B, T, c = y_BTc.shape
    L, Hp = T // P, heads // P
    D = c // Hp
    y_PBLhD = y_BTc.view(B, P, L, Hp, D).permute(1, 0, 2, 3, 4)  # chunk p = rank p's tokens
    x_PBLhD = _AllToAll.apply(y_PBLhD, sp.group)  # chunk p = head group p of our tokens
    return x_PBLhD.permute(1, 2, 0, 3, 4).reshape(B, L, P * Hp * D)


class _GatherTokens(torch.autograd.Function):
    """All-gather along the token dim. Backward: this rank's slice of the gradient, NOT a sum over
    ranks: every rank computes the same loss from the same gathered tensor (summing would count it P
    times)."""

    @staticmethod
    def forward(ctx: Any, x_BLC: torch.Tensor, group: Any, rank: int, size: int) -> torch.Tensor:
        ctx.rank, ctx.local = rank, x_BLC.shape[1]
        x_BLC = x_BLC.contiguous()
        parts = [torch.empty(x_BLC.shape, dtype=x_BLC.dtype, device=x_BLC.device) for _ in range(size)]
        dist.all_gather(parts, x_BLC, group=group)
        return torch.cat(parts, dim=1)

    @staticmethod
    def backward(ctx: Any, grad_BTC: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        start = ctx.rank * ctx.local
        return grad_BTC[:, start : start + ctx.local].contiguous(), None, None, None


def gather_tokens(x_BLC: torch.Tensor, sp: SequenceParallelGroup, tokens: int) -> torch.Tensor:
    """The whole (B, T, C) sequence from every rank's (B, L, C) shard, padding dropped."""
    return _GatherTokens.apply(x_BLC, sp.group, sp.rank, sp.size)[:, :tokens]


# -- the attention_function wrapper -----------------------------------------------------------------
class UlyssesAttention:
    """attention_function wrapper: all-to-all in, inner attention on whole sequences with H/P heads,
    all-to-all out. `inner` is ltxdist's MaskableAttention around ltx-core's function, so key and
    query masks are set on whole (padded) sequences. Passes straight through while not exchanging."""

    def __init__(self, inner: Any, sp: SequenceParallelGroup):
        self.inner = inner
        self.sp = sp

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if not self.sp.active:
            return self.inner(q, k, v, heads, mask)
        if mask is not None:
            # ltx-core passes these modules only a dense self-attention mask, refused in shard_modality.
            raise ValueError("sequence parallelism does not support dense self-attention masks")
        q_full, k_full, v_full = (sequence_to_heads(t, heads, self.sp) for t in (q, k, v))
        out_full = self.inner(q_full, k_full, v_full, heads // self.sp.size, None)
        return heads_to_sequence(out_full, heads, self.sp)


def install_sequence_parallel(model: torch.nn.Module, sp: SequenceParallelGroup) -> int:
    """Wrap the attention function of every token-exchanging module (idempotent); returns how many.

    MaskableAttention goes inside the Ulysses wrapper: the masks describe whole sequences, which is
    what the inner function sees. The model is tagged with P so FLOP accounting can tell local tokens
    from whole sequences.
    """
    check_heads_divisible(model, sp.size)
    install_maskable_attention(model)
    n = 0
    for block in model.transformer_blocks:
        for name in ULYSSES_MODULES:
            attn = getattr(block, name, None)
            if attn is None or isinstance(attn.attention_function, UlyssesAttention):
                continue
            attn.attention_function = UlyssesAttention(attn.attention_function, sp)
            n += 1
    model.ltxdist_sequence_parallel_size = sp.size
    return n


# -- splitting the inputs ---------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenShard:
    """This rank's slice [start, stop) of a stream of `tokens` tokens padded to `padded`."""

    tokens: int
    padded: int
    start: int
    stop: int

    @property
    def padding(self) -> int:
        return self.padded - self.tokens


def token_shard(tokens: int, sp: SequenceParallelGroup) -> TokenShard:
    local = math.ceil(tokens / sp.size)
    return TokenShard(tokens, local * sp.size, sp.rank * local, (sp.rank + 1) * local)


def _pad_tokens(x: torch.Tensor, dim: int, padding: int, *, repeat_last: bool = False) -> torch.Tensor:
    if padding == 0:
        return x
    if repeat_last:
        tail = x.narrow(dim, x.shape[dim] - 1, 1)
        fill = tail.expand(*[padding if d == dim else -1 for d in range(x.ndim)])
    else:
        shape = list(x.shape)
        shape[dim] = padding
        fill = x.new_zeros(shape)
    return torch.cat([x, fill], dim=dim)


def shard_modality(modality: Modality, shard: TokenShard) -> Modality:
    """This rank's tokens of a Modality: latents, per-token timesteps and positions sliced (after
    padding); sigma, text context and its mask are per sample and stay whole."""
    if modality.attention_mask is not None:
        raise ValueError(
            "sequence parallelism does not support a dense Modality.attention_mask; use the strategies' "
            "key/query masks (strategies/attention_masks.py) or set parallel.sequence_parallel=1"
        )
    s, pad = slice(shard.start, shard.stop), shard.padding
    timesteps = modality.timesteps
    if timesteps.ndim >= 2 and timesteps.shape[1] == shard.tokens and shard.tokens > 1:
        timesteps = _pad_tokens(timesteps, 1, pad)[:, s]  # per-token: padding is clean (t = 0)
    return replace(
        modality,
        latent=_pad_tokens(modality.latent, 1, pad)[:, s],
        timesteps=timesteps,
        # finite positions for the padding (its RoPE is computed, then masked out of attention)
        positions=_pad_tokens(modality.positions, 2, pad, repeat_last=True)[:, :, s],
    )


def shard_attention_masks(
    key_keep: dict[str, torch.Tensor],
    query_keep: dict[str, torch.Tensor],
    shards: dict[str, TokenShard],
    batch: int,
    device: torch.device,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A strategy's (B, S) key / (B, T) query masks (whole sequences) -> the masks each wrapped module
    needs under sequence parallelism: whole padded sequences where tokens are exchanged (padding keys
    blocked), this rank's slice for the local queries of text cross-attention."""
    keys: dict[str, torch.Tensor] = {}
    queries: dict[str, torch.Tensor] = {}
    for name, (q_stream, k_stream) in ULYSSES_MODULES.items():
        if q_stream not in shards or k_stream not in shards:
            continue
        ks, qs = shards[k_stream], shards[q_stream]
        if name in key_keep or ks.padding:
            keep_BS = key_keep.get(name)
            if keep_BS is None:
                keep_BS = torch.ones(batch, ks.tokens, dtype=torch.bool, device=device)
            keys[name] = torch.nn.functional.pad(keep_BS.bool(), (0, ks.padding), value=False)
        if name in query_keep:
            # padding query rows are dropped at the gather: any value will do
            queries[name] = torch.nn.functional.pad(query_keep[name].bool(), (0, qs.padding), value=True)
    for name, q_stream in LOCAL_QUERY_MODULES.items():
        if name in key_keep:
            keys[name] = key_keep[name]  # text keys are whole on every rank
        if name in query_keep and q_stream in shards:
            qs = shards[q_stream]
            padded = torch.nn.functional.pad(query_keep[name].bool(), (0, qs.padding), value=True)
            queries[name] = padded[:, qs.start : qs.stop]
    return keys, queries


def sequence_parallel_forward(
    transformer: torch.nn.Module, out: StrategyOutput, sp: SequenceParallelGroup, perturbations: Any
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The transformer on this rank's tokens; returns whole-sequence (B, T, C) video and audio
    predictions (the same on every rank of the group), differentiable into this rank's shard."""
    modalities = {"video": out.video, "audio": out.audio}
    shards = {name: token_shard(m.latent.shape[1], sp) for name, m in modalities.items() if m is not None}
    local = {name: shard_modality(m, shards[name]) for name, m in modalities.items() if m is not None}
    first = next(m for m in modalities.values() if m is not None)
    key_keep, query_keep = shard_attention_masks(
        out.key_keep, out.query_keep, shards, first.latent.shape[0], first.latent.device
    )
    set_attention_masks(transformer, key_keep, query_keep)
    sp.active = True  # stays on through the backward (activation checkpointing recomputes)
    vx, ax = transformer(local.get("video"), local.get("audio"), perturbations)
    if vx is not None:
        vx = gather_tokens(vx, sp, shards["video"].tokens)
    if ax is not None:
        ax = gather_tokens(ax, sp, shards["audio"].tokens)
    return vx, ax
