"""ltxdist: distributed LoRA / IC-LoRA training for LTX-2.3."""

__version__ = "0.1.0"
