"""Preprocessing: raw clips + captions -> webdataset shards of cached latents (`ltxdist-prepare`).

Names load on first use (ltxdist/_lazy.py): `ltxdist-prepare --help` imports no torch."""

from ltxdist._lazy import lazy_exports

_EXPORTS = {
    "PrepareError": "ltxdist.data.prepare.pipeline",
    "PrepareOptions": "ltxdist.data.prepare.pipeline",
    "PrepareResult": "ltxdist.data.prepare.pipeline",
    "prepare_dataset": "ltxdist.data.prepare.pipeline",
    "ClipError": "ltxdist.data.prepare.samples",
    "SampleSpec": "ltxdist.data.prepare.samples",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
