"""ltxdist: distributed LoRA / IC-LoRA training for LTX-2.3."""

from ltxdist import log_filters as _log_filters

__version__ = "0.1.0"

_log_filters.install()
