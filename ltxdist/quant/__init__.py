"""8-bit storage of the frozen base (`model.base_precision`: bf16 | fp8 | int8).

formats.py: the storage formats and their quantize / dequantize; matmul.py: the base matmul on 8-bit
weights (up-cast per layer, or fp8 `_scaled_mm`); modules.py: turning Linears into 8-bit ones;
checkpoint.py: loading (quantize on load, the official FP8 checkpoint) and writing the FP8 layout;
base.py: the one call the training module makes.
"""

from ltxdist.quant.formats import BASE_PRECISIONS, FP8_SCALES, is_quantized_dtype
from ltxdist.quant.matmul import dequantized_weight, frozen_linear

__all__ = ["BASE_PRECISIONS", "FP8_SCALES", "dequantized_weight", "frozen_linear", "is_quantized_dtype"]
