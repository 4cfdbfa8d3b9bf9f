from ltxdist.models.checkpoint_file import CheckpointError, read_checkpoint_info
from ltxdist.models.loader import LoadedTransformer, build_meta_transformer, load_transformer

__all__ = [
    "CheckpointError",
    "LoadedTransformer",
    "build_meta_transformer",
    "load_transformer",
    "read_checkpoint_info",
]
