"""Typed training config. Hydra composes conf/ on top of these dataclasses, so an unknown or misspelt
key is an error that names it; `validate_config` runs cross-field checks before any model is built.

Each group dataclass holds one concern; functions receive the sub-config they need, not the whole tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING


@dataclass
class ModelConfig:
    name: str = MISSING
    checkpoint: str = MISSING  # path to the LTX-2.3 .safetensors (transformer under model.diffusion_model.)
    dtype: str = "bfloat16"  # frozen base weights and compute dtype: bfloat16 | float32
    gradient_checkpointing: bool = False  # per transformer block (non-reentrant)
    # Attention LoRA projections + q/k norm + RoPE: triton (fused kernels, CUDA), torch (ltx-core's own
    # code), auto (triton on CUDA, torch elsewhere)
    kernels: str = "auto"
    # Write a tiny random checkpoint at `checkpoint` when it is missing (tiny preset only; demo & tests).
    create_if_missing: bool = False


@dataclass
class LoRAConfig:
    rank: int = 32
    alpha: float = 32.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["attn"])  # set names and/or glob patterns
    blocks: list[int] | None = None  # None = every transformer block
    dtype: str = "float32"  # trainable adapter params
    init_seed: int = 0
    # Start the adapters AND the AdamW moments from this complete checkpoint directory (curriculum stages);
    # ignored when the run resumes from its own checkpoint.
    init_from: str | None = None


@dataclass
class StrategyConfig:
    name: str = "standard"
    first_frame_conditioning_p: float = 0.1
    with_audio: bool = True  # train the audio stream jointly when samples carry audio latents
    audio_sigma: str = "shared"  # shared | independent
    video_loss_weight: float = 1.0
    audio_loss_weight: float = 1.0
    caption_dropout_p: float = 0.0
    # video_to_video: target H/W over reference H/W (one integer for both); written into the LoRA file
    reference_downscale_factor: int = 1
    # audio_ref_only_ic
    use_negative_ref_positions: bool = True
    mask_video_to_ref_audio: bool = False
    mask_ref_audio_to_text: bool = False
    # shifted logit-normal sigma sampling (mu linear in the generated token count)
    sigma_mu_at_1024: float = 0.95
    sigma_mu_at_4096: float = 2.05
    sigma_std: float = 1.0
    sigma_uniform_p: float = 0.1


@dataclass
class MixSourceConfig:
    name: str = MISSING
    path: str = MISSING  # shard directory
    weight: float = 1.0  # share of batches drawn from this source


@dataclass
class DataConfig:
    path: str | None = MISSING  # directory with index.json + shards (unused when `mix` is set)
    # Several shard directories mixed by weight (e.g. one per character); each batch from one source.
    mix: list[MixSourceConfig] = field(default_factory=list)
    batch_size: int = 1
    num_workers: int = 0
    shuffle_buffer: int = 64
    split: str = "auto"  # auto | shard | sample
    # Make a synthetic cached-latent dataset at `path` when it is missing (demo & tests only).
    synthetic_if_missing: bool = False
    synthetic_num_samples: int = 32
    synthetic_buckets: list[str] = field(default_factory=lambda: ["64x64x17"])
    synthetic_reference_video_downscale: int | None = None  # add IC-LoRA references (video_to_video)
    synthetic_reference_audio_frames: int | None = None  # add ID-LoRA reference audio (audio_ref_only_ic)
    # Train on shards prepared for another base model version (major.minor) / with other encoder weights
    # than model.checkpoint; refused by default (data/compat.py): their latents are in another space.
    allow_model_version_mismatch: bool = False
    allow_encoder_mismatch: bool = False


@dataclass
class ScheduleConfig:
    name: str = "constant"  # constant | linear | cosine | two_phase
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # floor for linear / cosine decay, as a fraction of optim.lr
    phase_one_steps: int = 0  # two_phase: linear from lr to phase_two_lr over these steps, then constant
    phase_two_lr: float = 0.0


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | adamw8bit
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)


@dataclass
class TrainerConfig:
    max_steps: int = 1000
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = 1.0
    checkpoint_every_n_steps: int = 250
    keep_last_k: int = 3
    log_every_n_steps: int = 1
    progress_bar: bool = True
    deterministic: bool = False
    # A step whose loss or gradients hold NaN/Inf is skipped and counted (train/nonfinite_skipped); this
    # many such steps in a row stop the run with an error (training/nonfinite.py).
    max_consecutive_nonfinite: int = 5


PARALLEL_NAMES = ("single", "ddp", "fsdp2", "hsdp", "deepspeed_zero2", "deepspeed_zero3")


@dataclass
class ParallelConfig:
    # single | ddp | fsdp2 | hsdp | deepspeed_zero2 | deepspeed_zero3 (docs/distributed.md)
    name: str = "single"
    accelerator: str = "auto"  # auto | cpu | gpu
    devices: int = 1  # processes per node
    num_nodes: int = 1
    process_group_backend: str | None = None  # None: nccl on GPU, gloo on CPU
    compile: bool = False  # torch.compile each transformer block (after activation checkpointing)
    # fsdp2: free the gathered block weights after forward (re-gather in backward): less memory, more comm
    reshard_after_forward: bool = True
    reduce_dtype: str = "float32"  # fsdp2: dtype of the gradient reduce-scatter (LoRA grads)
    # deepspeed_zero2 / deepspeed_zero3: keep optimizer state (and for zero3 also parameters) on the CPU
    offload_optimizer: bool = False
    offload_params: bool = False
    # A collective (gradient all-reduce, barrier, broadcast) waiting longer than this for another rank
    # fails with an error naming this flag instead of hanging (a hung or dead rank).
    collective_timeout_s: float = 1800.0
    # Ulysses sequence parallelism: groups of this many consecutive processes share each sample, every
    # process holding 1/N of its tokens (parallel/sequence_parallel.py; docs/distributed.md). 1 = off.
    sequence_parallel: int = 1
    # fsdp2 / hsdp (parallel/dims.py): data parallelism as `replicate` replicas, each sharded over `shard`
    # processes (-1: the rest); replicate > 1 is HSDP. parallel=hsdp sets replicate to parallel.num_nodes.
    replicate: int = 1
    shard: int = -1


@dataclass
class LoggerConfig:
    name: str = "none"  # none | wandb
    project: str = "ltxdist"
    entity: str | None = None
    mode: str = "auto"  # auto (online only if WANDB_API_KEY is set) | online | offline | disabled
    tags: list[str] = field(default_factory=list)


@dataclass
class RunConfig:
    name: str = "run"
    dir: str = "runs/${run.name}"
    seed: int = 0
    resume: str = "auto"  # auto (newest complete checkpoint, else fresh) | never | must | <checkpoint dir>


@dataclass
class ValidationReference:
    """References of one validation prompt (paths): IC-LoRA video, ID-LoRA image + voice."""

    video: str | None = None
    image: str | None = None
    audio: str | None = None


@dataclass
class ValidationConfig:
    """Validation sampling during training (training/validation.py; docs/sampling.md)."""

    name: str = "none"  # none: off; any other config (e.g. default) samples
    every_n_steps: int = 250
    at_start: bool = False  # also sample before the first step (the base model + fresh adapters)
    prompts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [42])
    references: list[ValidationReference] = field(default_factory=list)  # empty, or one per prompt
    negative_prompt: str = "worst quality, inconsistent motion, blurry, jittery, distorted"
    width: int = 768
    height: int = 448
    num_frames: int = 89
    fps: float = 24.0
    steps: int = 30
    cfg_scale: float = 3.0
    audio_cfg_scale: float = 7.0
    stg_scale: float = 1.0
    stg_blocks: list[int] = field(default_factory=lambda: [29])
    rescale_scale: float = 0.7
    modality_scale: float = 3.0
    with_audio: bool = True
    checkpoint: str | None = None  # VAEs + text connectors; None: model.checkpoint
    gemma_root: str | None = None  # Gemma 3 folder for the prompts
    text_tokens: int | None = None


@dataclass
class StageConfig:
    """One stage of a curriculum: its own step count and config overrides (Hydra dotlist syntax)."""

    name: str = MISSING
    max_steps: int = MISSING
    overrides: list[str] = field(default_factory=list)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    run: RunConfig = field(default_factory=RunConfig)
    # Non-empty: run these stages in order in one command, carrying LoRA + optimizer (training/curriculum.py)
    stages: list[StageConfig] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)


class ConfigError(ValueError):
    """A config value is invalid; the message names the flag to fix."""


def _require(cond: bool, flag: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{flag}: {message}")


def validate_config(cfg: Any) -> None:
    """Cross-field checks that must pass before any model is built."""
    _require(cfg.model.dtype in ("bfloat16", "float32"), "model.dtype", "must be bfloat16 or float32")
    _require(
        cfg.model.kernels in ("auto", "triton", "torch"), "model.kernels", "must be auto, triton or torch"
    )
    _require(cfg.lora.rank >= 1, "lora.rank", f"must be >= 1, got {cfg.lora.rank}")
    _require(cfg.lora.alpha > 0, "lora.alpha", f"must be > 0, got {cfg.lora.alpha}")
    _require(0 <= cfg.lora.dropout < 1, "lora.dropout", f"must be in [0, 1), got {cfg.lora.dropout}")
    _require(cfg.lora.dtype in ("float32", "bfloat16"), "lora.dtype", "must be float32 or bfloat16")
    _require(
        cfg.strategy.name in ("standard", "video_to_video", "audio_ref_only_ic"),
        "strategy",
        f"unknown strategy {cfg.strategy.name!r} (standard | video_to_video | audio_ref_only_ic)",
    )
    _require(
        cfg.strategy.reference_downscale_factor >= 1,
        "strategy.reference_downscale_factor",
        "must be an integer >= 1",
    )
    _require(
        0 <= cfg.strategy.first_frame_conditioning_p <= 1,
        "strategy.first_frame_conditioning_p",
        "must be a probability in [0, 1]",
    )
    _require(0 <= cfg.strategy.caption_dropout_p <= 1, "strategy.caption_dropout_p", "must be in [0, 1]")
    _require(
        cfg.strategy.audio_sigma in ("shared", "independent"),
        "strategy.audio_sigma",
        "must be shared or independent",
    )
    if cfg.strategy.name == "audio_ref_only_ic":
        # The strategy trains the target audio at the video's sigma and always feeds audio: say so
        # rather than silently ignore these flags.
        _require(
            cfg.strategy.audio_sigma == "shared",
            "strategy.audio_sigma",
            "audio_ref_only_ic noises the target audio with the video's sigma; only shared is supported",
        )
        _require(
            cfg.strategy.with_audio,
            "strategy.with_audio",
            "audio_ref_only_ic always trains the audio stream; with_audio=false is not supported",
        )
    _require(
        cfg.strategy.video_loss_weight >= 0 and cfg.strategy.audio_loss_weight >= 0,
        "strategy.video_loss_weight / strategy.audio_loss_weight",
        "must be >= 0",
    )
    _require(
        bool(cfg.data.mix) or cfg.data.path is not None,
        "data.path",
        "set data.path=<shard dir>, or list several under data.mix",
    )
    _require(
        all(m.weight > 0 for m in cfg.data.mix),
        "data.mix[].weight",
        "every mixing weight must be > 0",
    )
    _require(cfg.data.batch_size >= 1, "data.batch_size", f"must be >= 1, got {cfg.data.batch_size}")
    _require(cfg.data.num_workers >= 0, "data.num_workers", "must be >= 0")
    _require(cfg.data.split in ("auto", "shard", "sample"), "data.split", "must be auto, shard or sample")
    _require(cfg.optim.name in ("adamw", "adamw8bit"), "optim", f"unknown optimizer {cfg.optim.name!r}")
    _require(cfg.optim.lr > 0, "optim.lr", f"must be > 0, got {cfg.optim.lr}")
    sched = cfg.optim.schedule
    _require(
        sched.name in ("constant", "linear", "cosine", "two_phase"),
        "optim.schedule.name",
        f"unknown schedule {sched.name!r} (constant | linear | cosine | two_phase)",
    )
    _require(sched.warmup_steps >= 0, "optim.schedule.warmup_steps", "must be >= 0")
    if sched.name == "two_phase":
        _require(sched.phase_one_steps > 0, "optim.schedule.phase_one_steps", "must be > 0 for two_phase")
        _require(sched.phase_two_lr > 0, "optim.schedule.phase_two_lr", "must be > 0 for two_phase")
    _require(cfg.trainer.max_steps >= 1, "trainer.max_steps", "must be >= 1")
    _require(cfg.trainer.accumulate_grad_batches >= 1, "trainer.accumulate_grad_batches", "must be >= 1")
    _require(cfg.trainer.checkpoint_every_n_steps >= 1, "trainer.checkpoint_every_n_steps", "must be >= 1")
    _require(cfg.trainer.keep_last_k >= 1, "trainer.keep_last_k", "must be >= 1 (the newest is always kept)")
    _require(
        cfg.trainer.max_consecutive_nonfinite >= 1,
        "trainer.max_consecutive_nonfinite",
        f"must be >= 1 (non-finite steps tolerated in a row), got {cfg.trainer.max_consecutive_nonfinite}",
    )
    _require(
        cfg.parallel.collective_timeout_s > 0,
        "parallel.collective_timeout_s",
        f"must be > 0 seconds, got {cfg.parallel.collective_timeout_s}",
    )
    _require(
        cfg.parallel.name in PARALLEL_NAMES,
        "parallel",
        f"unknown parallel config {cfg.parallel.name!r} ({' | '.join(PARALLEL_NAMES)})",
    )
    _require(
        cfg.parallel.accelerator in ("auto", "cpu", "gpu", "cuda"),
        "parallel.accelerator",
        f"must be auto, cpu or gpu, got {cfg.parallel.accelerator!r}",
    )
    _require(
        cfg.parallel.reduce_dtype in ("float32", "bfloat16"),
        "parallel.reduce_dtype",
        "must be float32 or bfloat16",
    )
    _require(
        not (cfg.parallel.offload_optimizer or cfg.parallel.offload_params)
        or cfg.parallel.name.startswith("deepspeed"),
        "parallel.offload_optimizer / parallel.offload_params",
        "CPU offload is a DeepSpeed option: use parallel=deepspeed_zero2 or parallel=deepspeed_zero3",
    )
    _require(
        not cfg.parallel.offload_params or cfg.parallel.name == "deepspeed_zero3",
        "parallel.offload_params",
        "only ZeRO-3 partitions parameters; use parallel=deepspeed_zero3 to offload them",
    )
    _require(
        cfg.parallel.devices >= 1 and cfg.parallel.num_nodes >= 1,
        "parallel.devices / parallel.num_nodes",
        "must be >= 1",
    )
    from ltxdist.parallel.dims import LayoutError, ParallelDims

    try:
        dims = ParallelDims.from_config(cfg.parallel)  # sizes and engine consistent, naming the flag
    except LayoutError as err:
        raise ConfigError(str(err)) from None
    if dims.engine == "ddp":
        # DDP (find_unused_parameters=False) fails at step 2 if an adapter never gets a gradient.
        from ltxdist.strategies.idle_modules import idle_lora_problem  # lazy: builds a meta block

        problem = idle_lora_problem(cfg.strategy, list(cfg.lora.targets))
        _require(problem is None, "lora.targets", problem or "")
    _require(cfg.logger.name in ("none", "wandb"), "logger", f"unknown logger {cfg.logger.name!r}")
    _require(
        cfg.logger.mode in ("auto", "online", "offline", "disabled"),
        "logger.mode",
        "must be auto, online, offline or disabled",
    )
    if "validation" in cfg:
        validate_validation_config(cfg.validation, cfg.strategy.name)


def validate_validation_config(v: Any, strategy: str) -> None:
    """Validation sampling settings: checked before training, not after N steps."""
    if v.name == "none":
        return
    _require(len(v.prompts) > 0, "validation.prompts", "needs at least one prompt")
    _require(len(v.seeds) > 0, "validation.seeds", "needs at least one seed")
    _require(v.every_n_steps >= 1, "validation.every_n_steps", "must be >= 1")
    _require(v.steps >= 2, "validation.steps", "must be >= 2")
    _require(
        v.width > 0 and v.height > 0 and v.width % 32 == 0 and v.height % 32 == 0,
        "validation.width / validation.height",
        f"must be positive multiples of 32, got {v.width}x{v.height}",
    )
    _require(
        v.num_frames >= 1 and (v.num_frames - 1) % 8 == 0,
        "validation.num_frames",
        f"must be 8n+1 (9, 17, ..., 121), got {v.num_frames}",
    )
    _require(v.fps > 0, "validation.fps", "must be > 0")
    _require(v.gemma_root is not None, "validation.gemma_root", "set it to the Gemma 3 folder (prompts)")
    _require(
        len(v.references) in (0, len(v.prompts)),
        "validation.references",
        f"give none or one per prompt ({len(v.prompts)}), got {len(v.references)}",
    )
    needs = {"video_to_video": "video", "audio_ref_only_ic": "audio"}.get(strategy)
    if needs is not None:
        _require(
            len(v.references) == len(v.prompts) and all(r[needs] for r in v.references),
            "validation.references",
            f"strategy={strategy} samples from a reference {needs}: give one `{needs}` per prompt",
        )
