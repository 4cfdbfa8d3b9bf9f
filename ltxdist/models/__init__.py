"""The LTX-2.3 transformer: checkpoint files, presets, the loader (names load on first use: _lazy.py)."""

from ltxdist._lazy import lazy_exports

_EXPORTS = {
    "CheckpointError": "ltxdist.models.checkpoint_file",
    "read_checkpoint_info": "ltxdist.models.checkpoint_file",
    "LoadedTransformer": "ltxdist.models.loader",
    "build_meta_transformer": "ltxdist.models.loader",
    "load_transformer": "ltxdist.models.loader",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
