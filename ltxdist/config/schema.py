"""Typed training config. Hydra composes conf/ on top of these dataclasses, so an unknown or misspelt
key is an error that names it; `validate_config` runs cross-field checks before any model is built.

Each group dataclass holds one concern; functions receive the sub-config they need, not the whole tree.

Closed groups: where a group's options differ in which keys they have (parallel, strategy, model, data,
optim, logger, validation), each option has its own dataclass, a subclass of the group's common one,
listed in GROUP_OPTIONS and named first in the option's defaults list (`conf/<group>/<option>.yaml`:
`- /schema/<group>/<option>@_here_`). The composed config then holds only the selected option's keys:
an option of another variant, or a misspelt `+key`, is an error naming the key and the group
(config/closure.py). `name` comes from the choice (`strategy=video_to_video`), never from
`strategy.name=...`. A key every option of a group has goes into the group's common dataclass; a key of
one option goes into that option's dataclass (one line either way).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, OmegaConf

from ltxdist.sampling.defaults import IMAGE_CONDITIONING_CRF


@dataclass
class ModelConfig:
    name: str = MISSING  # the choice: model=tiny | ltx23_22b
    checkpoint: str = MISSING  # path to the LTX-2.3 .safetensors (transformer under model.diffusion_model.)
    dtype: str = "bfloat16"  # frozen base weights and compute dtype: bfloat16 | float32
    gradient_checkpointing: bool = False  # per transformer block (non-reentrant)
    # Attention LoRA projections + q/k norm + RoPE: triton (fused kernels, CUDA), torch (ltx-core's own
    # code), auto (per call shape, the path measured fastest on this GPU kind; torch where nothing was
    # measured and on CPUs: never slower than torch by construction; ltxdist_kernels/dispatch.py)
    kernels: str = "auto"
    # kernels=auto on CUDA: time the paths of each call shape no committed measurement covers, the
    # first time it is seen (a few ms per shape, plus Triton's autotuning), instead of taking torch there
    kernels_calibrate: bool = False
    # Storage of the frozen base Linear weights (ltxdist/quant, docs/low_vram.md): bf16 (= model.dtype, no
    # quantization) | fp8 (float8_e4m3fn + scale; an FP8 checkpoint loads as it is) | int8 (torchao).
    base_precision: str = "bf16"
    fp8_scale: str = "row"  # fp8 quantized on load: one scale per output row (row) or per tensor (tensor)
    fp8_matmul: bool = False  # fp8 base on Hopper: fp8 matmuls (torch._scaled_mm), forward + input grad
    # Frozen weights of this many transformer blocks stay in host memory and are copied in one block ahead
    # (block swap, parallel/offload.py); swapped blocks are always recomputed, so it needs
    # parallel.activation_checkpointing other than off (auto: gradient_checkpointing=true). 0 = off.
    offload_blocks: int = 0


@dataclass
class TinyModelConfig(ModelConfig):
    """model=tiny: a tiny random LTX-2.3-format checkpoint (demo & tests)."""

    name: str = "tiny"
    # Write a tiny random checkpoint at `checkpoint` when it is missing.
    create_if_missing: bool = False


@dataclass
class LTX23ModelConfig(ModelConfig):
    """model=ltx23_22b: the official LTX-2.3 22B checkpoint."""

    name: str = "ltx23_22b"


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
    name: str = MISSING  # the choice: strategy=standard | video_to_video | audio_ref_only_ic
    first_frame_conditioning_p: float = 0.1
    video_loss_weight: float = 1.0
    audio_loss_weight: float = 1.0
    caption_dropout_p: float = 0.0
    # shifted logit-normal sigma sampling (mu linear in the generated token count)
    sigma_mu_at_1024: float = 0.95
    sigma_mu_at_4096: float = 2.05
    sigma_std: float = 1.0
    sigma_uniform_p: float = 0.1


@dataclass
class StandardStrategyConfig(StrategyConfig):
    """strategy=standard: text-to-video with optional joint audio."""

    name: str = "standard"
    with_audio: bool = True  # train the audio stream jointly when samples carry audio latents
    audio_sigma: str = "shared"  # shared | independent


@dataclass
class VideoToVideoStrategyConfig(StandardStrategyConfig):
    """strategy=video_to_video: IC-LoRA, [target | clean reference] in one self-attention."""

    name: str = "video_to_video"
    with_audio: bool = False
    # target H/W over reference H/W (one integer for both); written into the LoRA file
    reference_downscale_factor: int = 1


@dataclass
class AudioRefOnlyICStrategyConfig(StrategyConfig):
    """strategy=audio_ref_only_ic: ID-LoRA, identity from reference audio (always trains the audio
    stream, noised with the video's sigma)."""

    name: str = "audio_ref_only_ic"
    first_frame_conditioning_p: float = 0.9
    use_negative_ref_positions: bool = True
    mask_video_to_ref_audio: bool = False
    mask_ref_audio_to_text: bool = False
    # identity guidance scale at inference (an extra pass without the reference voice); used by
    # validation and written into the LoRA metadata, where ltxdist-sample reads it (ID-LoRA: 3)
    identity_guidance_scale: float = 3.0


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
    # Train on shards prepared for another base model version (major.minor) / with other encoder weights
    # than model.checkpoint; refused by default (data/compat.py): their latents are in another space.
    allow_model_version_mismatch: bool = False
    allow_encoder_mismatch: bool = False


@dataclass
class SyntheticDataConfig(DataConfig):
    """data=synthetic: synthetic cached latents (demo & tests)."""

    # Make a synthetic cached-latent dataset at `path` when it is missing.
    synthetic_if_missing: bool = False
    synthetic_num_samples: int = 32
    synthetic_buckets: list[str] = field(default_factory=lambda: ["64x64x17"])
    synthetic_reference_video_downscale: int | None = None  # add IC-LoRA references (video_to_video)
    synthetic_reference_audio_frames: int | None = None  # add ID-LoRA reference audio (audio_ref_only_ic)


@dataclass
class ScheduleConfig:
    name: str = "constant"  # constant | linear | cosine | two_phase
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # floor for linear / cosine decay, as a fraction of optim.lr
    phase_one_steps: int = 0  # two_phase: linear from lr to phase_two_lr over these steps, then constant
    phase_two_lr: float = 0.0


@dataclass
class OptimConfig:
    name: str = MISSING  # the choice: optim=adamw | adamw8bit
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)


@dataclass
class AdamWConfig(OptimConfig):
    name: str = "adamw"


@dataclass
class AdamW8bitConfig(OptimConfig):
    """bitsandbytes AdamW-8bit (CUDA only)."""

    name: str = "adamw8bit"


@dataclass
class TrainerConfig:
    max_steps: int = 1000
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = 1.0
    checkpoint_every_n_steps: int = 250
    keep_last_k: int = 3
    progress_bar: bool = True
    deterministic: bool = False
    # A step whose loss or gradients hold NaN/Inf is skipped and counted (train/nonfinite_skipped); this
    # many such steps in a row stop the run with an error (training/nonfinite.py).
    max_consecutive_nonfinite: int = 5


@dataclass
class ParallelConfig:
    name: str = MISSING  # the choice: single | ddp | fsdp2 | hsdp | deepspeed_zero2 | deepspeed_zero3
    accelerator: str = "auto"  # auto | cpu | gpu
    devices: int = 1  # processes per node
    num_nodes: int = 1
    compile: bool = False  # torch.compile each transformer block (after activation checkpointing)
    # Activation checkpointing per transformer block (parallel/activation_checkpointing.py): auto (budget
    # when memory_budget_gib is set, else model.gradient_checkpointing) | off | full | attention (keep the
    # attention outputs, recompute the rest) | every_k (every k-th block) | budget
    activation_checkpointing: str = "auto"
    activation_checkpointing_every: int = 2  # the k of every_k (refused with another mode)
    # GPU memory one process may use (GiB): budget mode picks, per step shape, the least recompute whose
    # predicted peak fits (the activation memory model of parallel/activation_memory.py); only with
    # activation_checkpointing auto or budget
    memory_budget_gib: float | None = None
    # Ulysses sequence parallelism: groups of this many consecutive processes share each sample, every
    # process holding 1/N of its tokens (parallel/sequence_parallel.py; docs/distributed.md). 1 = off.
    sequence_parallel: int = 1


@dataclass
class SingleParallelConfig(ParallelConfig):
    """parallel=single: one process."""

    name: str = "single"


@dataclass
class DistributedParallelConfig(ParallelConfig):
    """What every multi-process option has (docs/distributed.md)."""

    process_group_backend: str | None = None  # None: nccl on GPU, gloo on CPU
    # A collective (gradient all-reduce, barrier, broadcast) waiting longer than this for another rank
    # fails with an error naming this flag instead of hanging (a hung or dead rank).
    collective_timeout_s: float = 1800.0


@dataclass
class DDPParallelConfig(DistributedParallelConfig):
    name: str = "ddp"


@dataclass
class FSDP2ParallelConfig(DistributedParallelConfig):
    name: str = "fsdp2"
    # free the gathered block weights after forward (re-gather in backward): less memory, more comm
    reshard_after_forward: bool = True
    reduce_dtype: str = "float32"  # dtype of the gradient reduce-scatter (LoRA grads)
    # data parallelism as `replicate` replicas, each sharded over `shard` processes (-1: the rest);
    # replicate > 1 is HSDP (parallel/dims.py). parallel=hsdp sets replicate to parallel.num_nodes.
    replicate: int = 1
    shard: int = -1


@dataclass
class HSDPParallelConfig(FSDP2ParallelConfig):
    """parallel=hsdp: FSDP2 on a 2-D mesh, sharded inside a node and replicated across nodes."""

    name: str = "hsdp"


@dataclass
class DeepSpeedZero2ParallelConfig(DistributedParallelConfig):
    name: str = "deepspeed_zero2"
    offload_optimizer: bool = False  # keep the optimizer state on the CPU


@dataclass
class DeepSpeedZero3ParallelConfig(DeepSpeedZero2ParallelConfig):
    name: str = "deepspeed_zero3"
    offload_params: bool = False  # keep the parameter partitions on the CPU too


@dataclass
class NoLoggerConfig:
    """logger=none: metrics.jsonl only. The common part of every logger option."""

    name: str = "none"  # the choice: logger=none | wandb


@dataclass
class LoggerConfig(NoLoggerConfig):
    """logger=wandb: Weights & Biases."""

    name: str = "wandb"
    project: str = "ltxdist"
    entity: str | None = None
    mode: str = "auto"  # auto (online only if WANDB_API_KEY is set) | online | offline | disabled
    tags: list[str] = field(default_factory=list)


@dataclass
class RunConfig:
    name: str = "run"
    dir: str = "runs/${run.name}"
    seed: int = 0
    # auto | never | must | force | <checkpoint dir>. auto: the newest complete checkpoint, refused when
    # it belongs to another run (other settings: training/run_identity.py), a fresh start when there is
    # none; force: continue it even with changed settings (this run's optim.* apply); must: fail when
    # there is none; never: a fresh start, refused in a folder that already holds checkpoints or LoRA
    # files (use run.name=NEW); <checkpoint dir>: continue from it, the folder's later checkpoints moved
    # to RUN/abandoned/
    resume: str = "auto"


@dataclass
class ValidationReference:
    """References of one validation prompt (paths): IC-LoRA video, ID-LoRA image + voice."""

    video: str | None = None
    image: str | None = None
    audio: str | None = None


@dataclass
class NoValidationConfig:
    """validation=none: no sampling during training. The common part of every validation option."""

    name: str = "none"  # the choice: validation=none | default | ic_lora_card | id_lora


@dataclass
class ValidationConfig(NoValidationConfig):
    """Validation sampling during training (training/validation.py; docs/sampling.md)."""

    name: str = "default"
    every_n_steps: int = 250
    at_start: bool = False  # also sample before the first step (the base model + fresh adapters)
    prompts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [42])
    references: list[ValidationReference] = field(default_factory=list)  # empty, or one per prompt
    negative_prompt: str = "worst quality, inconsistent motion, blurry, jittery, distorted"
    lora_strength: float = 1.0  # the live adapters' output scaled by this while sampling (model cards: 1.4)
    width: int = 768
    height: int = 448
    num_frames: int = 89
    fps: float = 24.0
    steps: int = 30
    cfg_scale: float = 3.0
    audio_cfg_scale: float = 7.0
    stg_scale: float = 1.0
    stg_blocks: list[int] = field(default_factory=lambda: [28])  # ltx-pipelines' LTX-2.3 block (29: LTX-2)
    stg_mode: str = "stg_av"  # stg_av: skip video and audio self-attention; stg_v: video only
    rescale_scale: float = 0.7
    modality_scale: float = 3.0
    with_audio: bool = True
    # references[].image re-compressed by H.264 at this CRF before encoding, as ltx-pipelines does
    # (the model learnt first frames from compressed video); 0: off
    image_crf: int = IMAGE_CONDITIONING_CRF
    checkpoint: str | None = None  # VAEs + text connectors; None: model.checkpoint
    gemma_root: str | None = None  # Gemma 3 folder for the prompts
    text_tokens: int | None = None
    # Gemma's Linear weights in 8 bits for small GPUs (bf16 | fp8 | int8; encoders/text.py)
    text_encoder_precision: str = "bf16"


@dataclass
class ICLoRACardValidationConfig(ValidationConfig):
    """validation=ic_lora_card: as the Ingredients IC-LoRA model card samples (same keys as default)."""

    name: str = "ic_lora_card"


@dataclass
class IDLoRAValidationConfig(ValidationConfig):
    """validation=id_lora: as ID-LoRA-2.3 publishes its inference (same keys as default)."""

    name: str = "id_lora"


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
    logger: NoLoggerConfig = field(default_factory=NoLoggerConfig)
    validation: NoValidationConfig = field(default_factory=NoValidationConfig)
    run: RunConfig = field(default_factory=RunConfig)
    # Non-empty: run these stages in order in one command, carrying LoRA + optimizer (training/curriculum.py)
    stages: list[StageConfig] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)


# The options of each closed group (see the module doc): conf/<group>/<option>.yaml names
# /schema/<group>/<option> first in its defaults list (config/store.py registers them there).
GROUP_OPTIONS: dict[str, dict[str, type]] = {
    "model": {"tiny": TinyModelConfig, "ltx23_22b": LTX23ModelConfig},
    "strategy": {
        "standard": StandardStrategyConfig,
        "video_to_video": VideoToVideoStrategyConfig,
        "audio_ref_only_ic": AudioRefOnlyICStrategyConfig,
    },
    "data": {"shards": DataConfig, "synthetic": SyntheticDataConfig},
    "optim": {"adamw": AdamWConfig, "adamw8bit": AdamW8bitConfig},
    "parallel": {
        "single": SingleParallelConfig,
        "ddp": DDPParallelConfig,
        "fsdp2": FSDP2ParallelConfig,
        "hsdp": HSDPParallelConfig,
        "deepspeed_zero2": DeepSpeedZero2ParallelConfig,
        "deepspeed_zero3": DeepSpeedZero3ParallelConfig,
    },
    "logger": {"none": NoLoggerConfig, "wandb": LoggerConfig},
    "validation": {
        "none": NoValidationConfig,
        "default": ValidationConfig,
        "ic_lora_card": ICLoRACardValidationConfig,
        "id_lora": IDLoRAValidationConfig,
    },
}
PARALLEL_NAMES = tuple(GROUP_OPTIONS["parallel"])


class ConfigError(ValueError):
    """A config value is invalid; the message names the flag to fix."""


def _require(cond: bool, flag: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{flag}: {message}")


def validate_config(cfg: Any) -> None:
    """Cross-field checks that must pass before any model is built (after the closure check: every key
    belongs to the selected options)."""
    from ltxdist.config.closure import check_closed  # closure.py reads GROUP_OPTIONS from here

    check_closed(cfg)
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
    if cfg.strategy.name == "video_to_video":
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
    if "audio_sigma" in cfg.strategy:  # audio_ref_only_ic has none: audio at the video's sigma, always
        _require(
            cfg.strategy.audio_sigma in ("shared", "independent"),
            "strategy.audio_sigma",
            "must be shared or independent",
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
        not cfg.data.mix or OmegaConf.is_missing(cfg.data, "path") or cfg.data.path is None,
        "data.path",
        "unused when data.mix lists the shard directories: set data.path=null (or drop data.mix)",
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
    else:  # schedule options another schedule would use do nothing here: say so
        _require(
            sched.phase_one_steps == 0 and sched.phase_two_lr == 0,
            "optim.schedule.phase_one_steps / optim.schedule.phase_two_lr",
            f"options of optim.schedule.name=two_phase, not of {sched.name}",
        )
    if sched.name not in ("linear", "cosine"):
        _require(
            sched.min_lr_ratio == 0,
            "optim.schedule.min_lr_ratio",
            f"the floor of linear and cosine decay; schedule {sched.name} does not decay to it",
        )
    _require(cfg.trainer.max_steps >= 1, "trainer.max_steps", "must be >= 1")
    _require(cfg.trainer.accumulate_grad_batches >= 1, "trainer.accumulate_grad_batches", "must be >= 1")
    _require(cfg.trainer.checkpoint_every_n_steps >= 1, "trainer.checkpoint_every_n_steps", "must be >= 1")
    _require(cfg.trainer.keep_last_k >= 1, "trainer.keep_last_k", "must be >= 1 (the newest is always kept)")
    _require(
        cfg.trainer.max_consecutive_nonfinite >= 1,
        "trainer.max_consecutive_nonfinite",
        f"must be >= 1 (non-finite steps tolerated in a row), got {cfg.trainer.max_consecutive_nonfinite}",
    )
    if "collective_timeout_s" in cfg.parallel:  # every multi-process option
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
    validate_activation_checkpointing(cfg.parallel)
    validate_base_precision(cfg.model, cfg.parallel)  # after: block swap checks the resolved policy
    if "reduce_dtype" in cfg.parallel:  # the FSDP2 options (fsdp2, hsdp)
        _require(
            cfg.parallel.reduce_dtype in ("float32", "bfloat16"),
            "parallel.reduce_dtype",
            "must be float32 or bfloat16",
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
    _require(
        not (cfg.optim.name == "adamw8bit" and dims.shards_with_fsdp),
        "optim",
        f"bitsandbytes' AdamW8bit cannot update FSDP2's sharded (DTensor) parameters (it fails at the first "
        f"step); use optim=adamw with parallel={cfg.parallel.name}, or parallel=ddp / single with "
        "optim=adamw8bit",
    )
    _require(
        not (cfg.optim.name == "adamw8bit" and dims.engine == "deepspeed"),
        "optim",
        "bitsandbytes' AdamW8bit keeps block-quantized state (state1/2 with absmax/qmap) that DeepSpeed's "
        "flat partitions cannot map back to parameters: the first checkpoint would fail after hours of "
        f"training. Use optim=adamw with parallel={cfg.parallel.name}, or parallel=ddp / single with "
        "optim=adamw8bit",
    )
    if dims.engine == "ddp":
        # DDP (find_unused_parameters=False) fails at step 2 if an adapter never gets a gradient.
        from ltxdist.strategies.idle_modules import idle_lora_problem  # lazy: builds a meta block

        problem = idle_lora_problem(cfg.strategy, list(cfg.lora.targets))
        _require(problem is None, "lora.targets", problem or "")
    _require(cfg.logger.name in ("none", "wandb"), "logger", f"unknown logger {cfg.logger.name!r}")
    if cfg.logger.name == "wandb":
        _require(
            cfg.logger.mode in ("auto", "online", "offline", "disabled"),
            "logger.mode",
            "must be auto, online, offline or disabled",
        )
    if "validation" in cfg:
        validate_validation_config(cfg.validation, cfg.strategy.name)


def validate_activation_checkpointing(p: Any) -> None:
    """parallel.activation_checkpointing / activation_checkpointing_every / memory_budget_gib: valid, and
    none set where the selected mode ignores it (parallel/activation_checkpointing.py)."""
    mode = p.activation_checkpointing
    _require(
        mode in ("auto", "off", "full", "attention", "every_k", "budget"),
        "parallel.activation_checkpointing",
        "must be auto, off, full, attention, every_k or budget",
    )
    _require(
        mode != "budget" or p.memory_budget_gib is not None,
        "parallel.memory_budget_gib",
        "parallel.activation_checkpointing=budget needs a budget: set parallel.memory_budget_gib=<GiB>",
    )
    _require(
        p.memory_budget_gib is None or p.memory_budget_gib > 0,
        "parallel.memory_budget_gib",
        f"must be > 0 GiB, got {p.memory_budget_gib}",
    )
    _require(
        p.memory_budget_gib is None or mode in ("auto", "budget"),
        "parallel.memory_budget_gib",
        f"only parallel.activation_checkpointing=budget (or auto) plans to a budget; {mode} ignores it: drop "
        "parallel.memory_budget_gib or set parallel.activation_checkpointing=budget",
    )
    _require(
        p.activation_checkpointing_every >= 1,
        "parallel.activation_checkpointing_every",
        f"must be >= 1, got {p.activation_checkpointing_every}",
    )
    default_every = ParallelConfig.activation_checkpointing_every
    _require(
        mode == "every_k" or p.activation_checkpointing_every == default_every,
        "parallel.activation_checkpointing_every",
        f"the k of parallel.activation_checkpointing=every_k; {mode} ignores it: drop it or set "
        "parallel.activation_checkpointing=every_k",
    )


def validate_base_precision(m: Any, parallel: Any) -> None:
    """model.base_precision / fp8_* / offload_blocks (ltxdist/quant, parallel/offload.py)."""
    _require(m.base_precision in ("bf16", "fp8", "int8"), "model.base_precision", "must be bf16, fp8 or int8")
    _require(m.fp8_scale in ("row", "tensor"), "model.fp8_scale", "must be row or tensor")
    _require(
        not m.fp8_matmul or m.base_precision == "fp8",
        "model.fp8_matmul",
        f"fp8 matmuls need the fp8 base: set model.base_precision=fp8 (it is {m.base_precision})",
    )
    _require(m.offload_blocks >= 0, "model.offload_blocks", f"must be >= 0, got {m.offload_blocks}")
    if m.offload_blocks > 0:
        from ltxdist.parallel.activation_checkpointing import checkpointing_policy

        # The resolved policy decides (auto: model.gradient_checkpointing, or budget with a budget).
        policy = checkpointing_policy(parallel, gradient_checkpointing=m.gradient_checkpointing)
        _require(
            policy.mode != "off",
            "model.offload_blocks",
            "swapped blocks must be recomputed in backward (without it autograd keeps every swapped block's "
            "weights on the device, so swapping saves nothing): set parallel.activation_checkpointing to "
            "full, attention, every_k or budget instead of off (auto: model.gradient_checkpointing=true)",
        )
        _require(
            not parallel.compile,
            "model.offload_blocks",
            "is not supported with parallel.compile=true (block swap replaces weights between calls)",
        )
    from ltxdist.parallel.dims import ENGINES

    sharded = ENGINES.get(parallel.name) in ("fsdp", "deepspeed")
    _require(
        not (sharded and m.base_precision != "bf16"),
        "model.base_precision",
        f"an 8-bit base is not supported with parallel={parallel.name} (FSDP2 / ZeRO would cast or flatten "
        "the 8-bit weights without their scales): use parallel=single or ddp, or model.base_precision=bf16",
    )
    _require(
        not (sharded and m.offload_blocks > 0),
        "model.offload_blocks",
        f"block swap is not supported with parallel={parallel.name} (it shards the weights instead): "
        "use parallel=single or ddp, or model.offload_blocks=0",
    )


def validate_validation_config(v: Any, strategy: str) -> None:
    """Validation sampling settings: checked before training, not after N steps."""
    if v.name == "none":
        return
    _require(
        v.text_encoder_precision in ("bf16", "fp8", "int8"),
        "validation.text_encoder_precision",
        "must be bf16, fp8 or int8",
    )
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
    _require(
        v.stg_mode in ("stg_av", "stg_v"),
        "validation.stg_mode",
        f"must be stg_av (video + audio) or stg_v (video only), got {v.stg_mode!r}",
    )
    from ltxdist.data.media import MAX_CRF

    _require(
        0 <= v.image_crf <= MAX_CRF,
        "validation.image_crf",
        f"must be in 0..{MAX_CRF} (0: off), got {v.image_crf}",
    )
    _require(v.lora_strength >= 0, "validation.lora_strength", f"must be >= 0, got {v.lora_strength}")
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
    _require(
        v.with_audio or not any(r.audio for r in v.references),
        "validation.with_audio",
        "a reference voice (validation.references[].audio) conditions the audio stream: set "
        "validation.with_audio=true, or drop the references' audio",
    )
