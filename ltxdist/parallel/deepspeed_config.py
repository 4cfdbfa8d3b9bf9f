"""Generate the DeepSpeed config for `parallel=deepspeed_zero2|deepspeed_zero3` from the parallel group.

Lightning adds gradient accumulation and gradient clipping from the trainer, so they are deliberately
absent here (setting `gradient_accumulation_steps` twice is a Lightning error).
No fp16/bf16 section: dtypes are explicit in ltxdist (frozen base in model.dtype, adapters and their
optimizer state in lora.dtype), the same under every parallel config, so DeepSpeed casts nothing.
"""

from __future__ import annotations

from typing import Any

ZERO_STAGES = {"deepspeed_zero2": 2, "deepspeed_zero3": 3}
_BUCKET = 200_000_000  # elements per reduce / all-gather bucket (DeepSpeed's usual default)


def zero_stage(parallel_cfg: Any) -> int:
    try:
        return ZERO_STAGES[parallel_cfg.name]
    except KeyError:
        raise ValueError(
            f"parallel={parallel_cfg.name} is not a DeepSpeed config ({', '.join(ZERO_STAGES)})"
        ) from None


def deepspeed_config(parallel_cfg: Any, *, on_gpu: bool) -> dict[str, Any]:
    stage = zero_stage(parallel_cfg)
    zero: dict[str, Any] = {
        "stage": stage,
        "contiguous_gradients": True,
        # Overlapping reduction with backward needs CUDA streams; on the CPU (tests) it only adds threads.
        "overlap_comm": on_gpu,
        "reduce_scatter": True,
        "reduce_bucket_size": _BUCKET,
        "allgather_bucket_size": _BUCKET,
    }
    if parallel_cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
    if stage == 3:
        zero.update(
            {
                # Small parameters (norms, biases) stay gathered: one all-gather each per step costs
                # more in latency than their memory is worth.
                "stage3_param_persistence_threshold": 100_000,
                "stage3_prefetch_bucket_size": 50_000_000,
                # ltxdist gathers only the LoRA adapters for checkpoints and exports, never the base.
                "stage3_gather_16bit_weights_on_model_save": False,
            }
        )
        if parallel_cfg.offload_params:
            zero["offload_param"] = {"device": "cpu", "pin_memory": on_gpu}
    return {
        # DeepSpeed uses the micro-batch size only to report samples/s (ltxdist reports its own);
        # Lightning would otherwise try to read it from the (iterable, sampler-less) dataloader.
        "train_micro_batch_size_per_gpu": 1,
        "zero_optimization": zero,
        # The optimizer is ltxdist's torch AdamW over LoRA parameters (configure_optimizers): DeepSpeed
        # would otherwise refuse a "untested" client optimizer, or swap in its own compiled CPU Adam
        # when offloading (a C++ build and a different update rule).
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 1_000_000_000,  # ltxdist logs its own metrics
        "wall_clock_breakdown": False,
    }
