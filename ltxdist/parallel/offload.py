"""Block swap (`model.offload_blocks: N`): the frozen weights of N transformer blocks live in host memory
(pinned on CUDA) and are copied to the device just before their block runs, one offloaded block ahead on
a side stream, then dropped.

Schedule. With activation checkpointing a training step runs the blocks forward (0, 1, ..., L-1), then
recomputes them during backward (L-1, ..., 0): each offloaded block is copied once for the forward and
once for its recompute, and its device copy is gone once its backward is done. While block i runs, the
next offloaded block in the current direction is copied on the side stream; at the last block of a
forward that will be recomputed (grad enabled), that same block is copied again for its recompute.
Direction is read from the order blocks are called in (a block called twice in a row turns it).

Mechanics. Between uses an offloaded block's frozen parameters are `None` in their module (so nothing,
e.g. Lightning's `model.to(device)`, moves the host copies), and the offloader holds the host tensors. A
forward pre-hook puts fresh device Parameters in place; a forward hook that also runs when the forward
raises (checkpoint recompute stops early by raising) removes them. Autograd keeps what backward needs
through its own references, so the device memory is freed exactly when backward is done with it. Only
frozen parameters move: adapters and buffers (e.g. 8-bit weight scales) stay on the device.

Offloaded blocks are spread evenly over the stack (every other one for N = L/2) so that each copy
overlaps the compute of the resident blocks between them. On the CPU the same schedule runs with plain
copies (what the tests count); `transfers` counts block copies per block index.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch

_ADAPTER_SUFFIXES = ("lora_A", "lora_B")
# Swapped blocks on the device at once: the one running, the one prefetched, and the one whose backward
# autograd is finishing when the next recompute starts.
BLOCKS_IN_FLIGHT = 3
# Instance attribute of a swapped block: its (forward pre-hook, forward hook), see BlockOffloader.
SWAP_HOOKS = "ltxdist_swap_hooks"


def offloaded_block_indices(num_blocks: int, count: int) -> list[int]:
    """`count` of `num_blocks` block indices, spread evenly (floor(k * L / N): distinct for N <= L)."""
    if not 0 <= count <= num_blocks:
        raise ValueError(
            f"model.offload_blocks must be in [0, {num_blocks}] (the model's blocks), got {count}"
        )
    return [k * num_blocks // count for k in range(count)]


def frozen_parameter_names(block: torch.nn.Module) -> list[str]:
    """The block's parameters that block swap moves: every frozen one except LoRA adapters."""
    return [
        name
        for name, p in block.named_parameters()
        if not p.requires_grad and not name.endswith(_ADAPTER_SUFFIXES)
    ]


@dataclass
class _Slot:
    owner: torch.nn.Module
    name: str
    host: torch.Tensor


@dataclass
class _Copy:
    tensors: list[torch.Tensor]
    ready: torch.cuda.Event | None


class BlockOffloader:
    def __init__(self, blocks: torch.nn.ModuleList, indices: list[int], device: torch.device):
        self.blocks = blocks
        self.indices = sorted(indices)
        self.device = torch.device(device)
        self.copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.slots: dict[int, list[_Slot]] = {}
        self.transfers: Counter[int] = Counter()
        self.bytes_moved = 0
        self._pending: dict[int, _Copy] = {}
        self._last: int | None = None
        self._direction = 1
        self._handles: list[Any] = []
        pin = self.device.type == "cuda"
        for i in self.indices:
            slots = []
            for name in frozen_parameter_names(blocks[i]):
                owner_name, _, attr = name.rpartition(".")
                owner = blocks[i].get_submodule(owner_name)
                param = owner._parameters[attr]
                assert param is not None
                host = param.detach()
                if host.device.type != "cpu":
                    host = host.to("cpu")
                if pin and not host.is_pinned():
                    host = host.pin_memory()
                slots.append(_Slot(owner, attr, host))
                owner._parameters[attr] = None  # between uses the block has no frozen weights at all
            self.slots[i] = slots
            pre, post = self._pre_hook(i), self._post_hook(i)
            self._handles.append(blocks[i].register_forward_pre_hook(pre))
            self._handles.append(blocks[i].register_forward_hook(post, always_call=True))
            # For a recompute outside the module call (activation_checkpointing's per-block modes run it
            # on the block's plain forward): the same two hooks, to run around it.
            blocks[i].__dict__[SWAP_HOOKS] = (pre, post)

    # -- bookkeeping --------------------------------------------------------------------------------
    def block_bytes(self, i: int) -> int:
        return sum(s.host.numel() * s.host.element_size() for s in self.slots[i])

    def host_bytes(self) -> int:
        return sum(self.block_bytes(i) for i in self.indices)

    def in_flight_bytes(self) -> int:
        """The most device memory the swapped blocks' copies take at once (BLOCKS_IN_FLIGHT largest)."""
        return sum(sorted((self.block_bytes(i) for i in self.indices), reverse=True)[:BLOCKS_IN_FLIGHT])

    def reset_counts(self) -> None:
        self.transfers.clear()
        self.bytes_moved = 0

    # -- copies -------------------------------------------------------------------------------------
    def _copy(self, i: int) -> _Copy:
        self.transfers[i] += 1
        self.bytes_moved += self.block_bytes(i)
        if self.copy_stream is None:
            return _Copy([s.host.to(self.device, copy=True) for s in self.slots[i]], None)
        # Side stream: the copy overlaps the compute of the block running now.
        with torch.cuda.stream(self.copy_stream):
            tensors = [s.host.to(self.device, non_blocking=True) for s in self.slots[i]]
            ready = torch.cuda.Event()
            ready.record(self.copy_stream)
        return _Copy(tensors, ready)

    def _take(self, i: int) -> list[torch.Tensor]:
        copy = self._pending.pop(i, None) or self._copy(i)
        if copy.ready is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(copy.ready)
            for t in copy.tensors:
                # Allocated on the side stream, used on the compute stream: not reusable before that use.
                t.record_stream(compute)
        return copy.tensors

    def _next(self, i: int) -> int | None:
        position = self.indices.index(i)
        following = position + self._direction
        if 0 <= following < len(self.indices):
            return self.indices[following]
        if self._direction > 0 and torch.is_grad_enabled():
            return i  # the end of a forward that backward will recompute, starting with this block
        return None

    # -- hooks --------------------------------------------------------------------------------------
    def _pre_hook(self, i: int):
        def hook(module: torch.nn.Module, args: Any) -> None:
            if self._last is not None:
                self._direction = 1 if i > self._last else -1 if i < self._last else -self._direction
            self._last = i
            for slot, tensor in zip(self.slots[i], self._take(i), strict=True):
                slot.owner._parameters[slot.name] = torch.nn.Parameter(tensor, requires_grad=False)
            following = self._next(i)
            if following is not None and following not in self._pending:
                self._pending[following] = self._copy(following)

        return hook

    def _post_hook(self, i: int):
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            # Autograd keeps what backward needs; this only drops the module's own reference.
            for slot in self.slots[i]:
                slot.owner._parameters[slot.name] = None

        return hook

    def remove(self) -> None:
        """Undo: hooks removed, the frozen weights back in their modules (on the host)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._pending.clear()
        for i in self.indices:
            self.blocks[i].__dict__.pop(SWAP_HOOKS, None)
        for slots in self.slots.values():
            for slot in slots:
                slot.owner._parameters[slot.name] = torch.nn.Parameter(slot.host, requires_grad=False)


def install_block_offload(model: torch.nn.Module, count: int, device: torch.device) -> BlockOffloader | None:
    """Offload `count` of `model.transformer_blocks` (materialised, frozen weights loaded). None for 0."""
    if count == 0:
        return None
    blocks = model.transformer_blocks
    return BlockOffloader(blocks, offloaded_block_indices(len(blocks), count), device)


def offloaded_parameter_names(model: torch.nn.Module, count: int) -> set[str]:
    """Model-level names of the parameters `install_block_offload(model, count)` will move: materialise
    them on the host, never on the device."""
    blocks = model.transformer_blocks
    return {
        f"transformer_blocks.{i}.{name}"
        for i in offloaded_block_indices(len(blocks), count)
        for name in frozen_parameter_names(blocks[i])
    }


def to_empty_with_host_blocks(model: torch.nn.Module, device: torch.device, host_names: set[str]) -> None:
    """`model.to_empty(device)`, except that the parameters in `host_names` are allocated in host memory
    (pinned when `device` is a GPU): the offloaded weights never touch the device."""
    pin = torch.device(device).type == "cuda"
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for name, param in list(module._parameters.items()):
            if param is None:
                continue
            on_host = prefix + name in host_names
            data = torch.empty_like(param, device="cpu" if on_host else device, pin_memory=on_host and pin)
            module._parameters[name] = torch.nn.Parameter(data, requires_grad=param.requires_grad)
        for name, buf in list(module._buffers.items()):
            if buf is not None:
                module._buffers[name] = torch.empty_like(buf, device=device)


def ddp_ignored_names(module: torch.nn.Module) -> list[str]:
    """Frozen parameters and buffers for DDP to leave alone: every rank loads them from the same file, so
    DDP's start-up broadcast only costs time, cannot send 8-bit dtypes over gloo, and must not see the
    host-resident weights of offloaded blocks."""
    names = [n for n, p in module.named_parameters() if not p.requires_grad]
    return names + [n for n, _ in module.named_buffers()]
