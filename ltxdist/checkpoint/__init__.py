"""Training checkpoints on torch.distributed.checkpoint (DCP) with its Hugging Face safetensors storage.

One format under every parallel layout (single, DDP, FSDP2, HSDP, DeepSpeed ZeRO): the adapters and
their optimizer state keyed by parameter name in per-rank safetensors files, a JSON train state that
ltxdist owns, and meta.json written last (files.py). No pickle is written or read. A checkpoint written
under any layout resumes under any other (DCP reshards); a warm start is the same load without the
train state.
"""

from ltxdist.checkpoint.checkpointer import (
    CheckpointContents,
    check_checkpoint,
    load_checkpoint,
    load_newest,
    read_checkpoint,
    save_checkpoint,
)
from ltxdist.checkpoint.files import (
    CheckpointFormatError,
    CheckpointMismatchError,
    LegacyCheckpointError,
    is_complete_checkpoint,
)
from ltxdist.checkpoint.train_state import TrainState, read_train_state
from ltxdist.checkpoint.trainable import TorchTrainable, Trainable

__all__ = [
    "CheckpointContents",
    "CheckpointFormatError",
    "CheckpointMismatchError",
    "LegacyCheckpointError",
    "TorchTrainable",
    "TrainState",
    "Trainable",
    "check_checkpoint",
    "is_complete_checkpoint",
    "load_checkpoint",
    "load_newest",
    "read_checkpoint",
    "read_train_state",
    "save_checkpoint",
]
