"""Preprocessing: raw clips + captions -> webdataset shards of cached latents (`ltxdist-prepare`)."""

from ltxdist.data.prepare.pipeline import PrepareError, PrepareOptions, PrepareResult, prepare_dataset
from ltxdist.data.prepare.samples import ClipError, SampleSpec

__all__ = ["ClipError", "PrepareError", "PrepareOptions", "PrepareResult", "SampleSpec", "prepare_dataset"]
