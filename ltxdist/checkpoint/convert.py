"""`python -m ltxdist.checkpoint.convert CHECKPOINT [--config CONFIG] [--out DIR]`: a checkpoint of the
format before torch.distributed.checkpoint (`state.json` + `tensors.safetensors` [+ `shards/`], ltxdist
formats 1 and 2) rewritten in this format, by default in place (atomically: the old one is replaced only
once the new one is complete). Resuming refuses such checkpoints with this command in the message.

The old format kept optimizer moments by parameter position; their names come from the run's LoRA,
built on the meta device from the run's config.yaml (two levels above RUN/checkpoints/step-N, or
`--config`). Runs in one process and reads every old file once; nothing is unpickled (JSON and
safetensors only)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from ltxdist.checkpoint.checkpointer import save_checkpoint
from ltxdist.checkpoint.files import LEGACY_FILES, CheckpointFormatError, is_legacy_checkpoint
from ltxdist.checkpoint.train_state import TrainState
from ltxdist.checkpoint.trainable import MODEL_PREFIX, OPTIM_PREFIX, json_hyperparameters


def read_legacy(path: Path) -> dict[str, Any]:
    """The old checkpoint's tree with every tensor whole (sharded ones assembled from their pieces)."""
    try:
        with safe_open(str(path / LEGACY_FILES[1]), framework="pt") as f:
            plain = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        meta = json.loads((path / "meta.json").read_text())
        pieces: dict[str, list[tuple[int, torch.Tensor]]] = {}
        for rank in range(int(meta.get("shards") or 0)):
            shard = path / "shards" / f"rank-{rank:05d}.safetensors"
            with safe_open(str(shard), framework="pt") as f:  # one open per file
                layout = json.loads((f.metadata() or {})["layout"])
                for key, (start, _) in layout.items():
                    pieces.setdefault(key, []).append((start, f.get_tensor(key)))
        tree = json.loads((path / LEGACY_FILES[0]).read_text())
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
        raise CheckpointFormatError(
            f"{path}: unreadable old checkpoint ({type(exc).__name__}: {exc})"
        ) from exc
    return _decode(tree, plain, pieces)


def _decode(
    obj: Any, plain: dict[str, torch.Tensor], pieces: dict[str, list[tuple[int, torch.Tensor]]]
) -> Any:
    if isinstance(obj, list):
        return [_decode(v, plain, pieces) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return plain[obj["__tensor__"]]
    if "__sharded__" in obj:
        parts = sorted(pieces.get(obj["__sharded__"], []), key=lambda p: p[0])
        full = torch.cat([t for _, t in parts], dim=obj["dim"]) if parts else None
        if full is None or tuple(full.shape) != tuple(obj["shape"]):
            raise CheckpointFormatError(f"sharded tensor {obj['__sharded__']}: pieces missing")
        return full
    if "__dict__" in obj:
        return {k: _decode(v, plain, pieces) for k, v in obj["__dict__"].items()}
    if "__items__" in obj:
        return {k: _decode(v, plain, pieces) for k, v in obj["__items__"]}
    if "__tuple__" in obj:
        return tuple(_decode(v, plain, pieces) for v in obj["__tuple__"])
    if "__dtype__" in obj:
        return str(obj["__dtype__"])
    raise CheckpointFormatError(f"unknown tagged object in an old checkpoint: {list(obj)[:3]}")


def adapter_order(cfg: Any) -> list[str]:
    """The run's adapter names in optimizer order (LTXLoRAModule.lora_parameters), built on meta."""
    from ltxdist.lora import LoRASpec, inject_lora
    from ltxdist.lora.inject import lora_modules
    from ltxdist.models import build_meta_transformer, read_checkpoint_info

    model = build_meta_transformer(read_checkpoint_info(cfg.model.checkpoint).config)
    inject_lora(
        model,
        LoRASpec(
            rank=cfg.lora.rank,
            alpha=cfg.lora.alpha,
            targets=tuple(cfg.lora.targets),
            blocks=tuple(cfg.lora.blocks) if cfg.lora.get("blocks") else None,
        ),
    )
    return [f"transformer.{name}.{ab}" for name in lora_modules(model) for ab in ("lora_A", "lora_B")]


class _Converted:
    """A Trainable whose tensors are already whole (save_checkpoint in one process)."""

    def __init__(self, tensors: dict[str, torch.Tensor], hyperparameters: list[dict[str, Any]]):
        self._tensors, self._hyper = tensors, hyperparameters
        self.params: dict[str, Any] = {}

    def tensors(self) -> dict[str, torch.Tensor]:
        return self._tensors

    def hyperparameters(self) -> list[dict[str, Any]]:
        return self._hyper


def convert(path: Path, config: Path, out: Path) -> None:
    from omegaconf import OmegaConf

    if not is_legacy_checkpoint(path):
        raise CheckpointFormatError(f"{path} is not a checkpoint of the old format (no {LEGACY_FILES[0]})")
    tree = read_legacy(path)
    cfg = OmegaConf.load(config)
    order = adapter_order(cfg)
    adapters = tree["state_dict"]
    if set(adapters) != set(order):
        raise CheckpointFormatError(
            f"{path}: its adapters do not match the LoRA of {config} "
            f"(missing {sorted(set(order) - set(adapters))[:3]})"
        )
    tensors = {MODEL_PREFIX + k: v for k, v in adapters.items()}
    optimizer = tree["optimizer_states"][0]
    for index, entry in optimizer["state"].items():
        name = order[int(index)]
        for key, value in entry.items():
            tensors[f"{OPTIM_PREFIX}{name}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    own = tree.get("ltxdist", {})
    layout = tree.get("ltxdist_layout") or {"world_size": 1, "micro_batch_size": int(cfg.data.batch_size)}
    state = TrainState(
        step=int(tree["global_step"]),
        data={"batches_seen": int(own.get("batches_seen", 0))},
        counters={"nonfinite": own.get("nonfinite", {})},
        scheduler=(tree.get("lr_schedulers") or [None])[0],
        layout={
            "data_parallel_size": int(layout["world_size"]),
            "micro_batch_size": int(layout["micro_batch_size"]),
            "converted_from": "ltxdist checkpoint format 1/2",
        },
        loops=tree.get("loops", {}).get("fit_loop"),
        model={"model_version": own.get("model_version"), "target_modules": own.get("target_modules", [])},
    )
    save_checkpoint(out, _Converted(tensors, json_hyperparameters(optimizer["param_groups"])), state)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m ltxdist.checkpoint.convert", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("checkpoint", type=Path, help="an old checkpoint directory (RUN/checkpoints/step-N)")
    p.add_argument(
        "--config", type=Path, default=None, help="the run's config.yaml (default: RUN/config.yaml)"
    )
    p.add_argument("--out", type=Path, default=None, help="where to write (default: in place)")
    args = p.parse_args(argv)
    config = args.config or args.checkpoint.resolve().parent.parent / "config.yaml"
    if not config.is_file():
        sys.exit(f"{config}: not found; pass the run's config.yaml with --config")
    try:
        convert(args.checkpoint, config, args.out or args.checkpoint)
    except CheckpointFormatError as err:
        sys.exit(f"error: {err}")
    print(f"converted {args.checkpoint} -> {args.out or args.checkpoint}")


if __name__ == "__main__":
    main()
