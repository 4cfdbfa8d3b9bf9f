"""Drop three known, harmless start-up messages from third-party libraries, and nothing else.

- torchao (imported by transformers whenever it is installed) tries to load optional CUDA kernels
  (`_C_mxfp8`, `_C_cutlass_90a`) built for other Python/GPU combinations and logs "Failed to load ..." at
  WARNING for each, on every command, on every machine where they cannot load (any CPU machine).
  ltxdist never uses those kernels: its int8 path uses torchao's pure-PyTorch primitives.
- torch's pytree logs a deprecation for each Enum that torchao registers as a constant.
- bitsandbytes, on a CPU with AVX512-BF16, tries to fetch a 4-bit GEMM kernel from the Hugging Face hub
  when imported and warns when it cannot; optim=adamw8bit does not use 4-bit GEMMs.

Both are filtered by exact origin and message shape so that any other warning from these libraries still
shows. Installed once, when `ltxdist` is imported, so every entry point (and torchrun workers) gets it.
"""

from __future__ import annotations

import logging

TORCHAO_LOGGER = "torchao"
PYTREE_LOGGER = "torch.utils._pytree"
BITSANDBYTES_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"


class _TorchaoOptionalKernels(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Failed to load ") and "/torchao/_C" in message)


class _EnumConstantDeprecation(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("is an Enum subclass" in message and "register_constant()" in message)


class _BitsandbytesHubKernel(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to load CPU gemm_4bit_forward")


def install() -> None:
    """Idempotent: a filter of the same class is added to each logger at most once."""
    for name, filter_type in (
        (TORCHAO_LOGGER, _TorchaoOptionalKernels),
        (PYTREE_LOGGER, _EnumConstantDeprecation),
        (BITSANDBYTES_CPU_LOGGER, _BitsandbytesHubKernel),
    ):
        logger = logging.getLogger(name)
        if not any(isinstance(f, filter_type) for f in logger.filters):
            logger.addFilter(filter_type())
