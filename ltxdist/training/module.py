"""LightningModule: flow-matching LoRA training of the LTX-2.3 transformer.

The transformer is built in `configure_model` (so parallel strategies can shard between building and
loading), LoRA is injected, and only adapter parameters reach the optimizer. Every random draw of a
step comes from a generator seeded by (seed, rank, batch counter): a resumed run draws exactly what an
uninterrupted one would, without saving generator state.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch

from ltxdist._ltx_core import BatchedPerturbationConfig
from ltxdist.data.position import (
    DataStart,
    all_gather_json,
    legacy_start,
    resume_start,
    saved_position,
    stream_layout,
)
from ltxdist.data.shards import load_empty_caption
from ltxdist.data.streaming import CURSOR_KEY
from ltxdist.lora import LoRASpec, inject_lora, lora_parameters
from ltxdist.lora.inject import lora_state_dict
from ltxdist.models.loader import MetaBase, check_transformer_keys
from ltxdist.parallel import materialize_transformer, parallelize_transformer
from ltxdist.parallel.dims import ParallelDims, ParallelMesh, mesh_device_type
from ltxdist.parallel.offload import BlockOffloader, ddp_ignored_names
from ltxdist.parallel.sequence_parallel import (
    SequenceParallelGroup,
    install_sequence_parallel,
    sequence_parallel_forward,
    sequence_parallel_group,
)
from ltxdist.quant.base import check_fp8_matmul_device, prepare_quantized_base
from ltxdist.strategies import StrategyOutput, build_strategy
from ltxdist.strategies.attention_masks import set_attention_masks
from ltxdist.strategies.rng import rand_per_sample, sample_generators, sample_seed, stream_ids
from ltxdist.tracking.metrics import TrainingMetrics
from ltxdist.training.datamodule import empty_caption_dir
from ltxdist.training.losses import masked_mse_per_sample, sigma_bucket_losses
from ltxdist.training.nonfinite import NonFiniteGuard, poison_nonfinite_loss, total_grad_norm
from ltxdist.training.optim import build_optimizer, build_scheduler
from ltxdist_kernels.attention import patch_attention_modules, resolve_backend
from ltxdist_kernels.dispatch import set_calibration

SIGMA_BUCKET_EDGES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


class LTXLoRAModule(pl.LightningModule):
    def __init__(self, cfg: Any, base: MetaBase | None = None):
        """`base`: model.checkpoint's header and meta transformer, shared with the training start-up's
        checks (training/train.py) so configure_model neither reads nor builds them again."""
        super().__init__()
        self.cfg = cfg
        self.base = base if base is not None else MetaBase(cfg.model.checkpoint)
        self.strategy_impl = build_strategy(cfg.strategy)
        # The parallel layout (validated sizes and engine): asked what the run does, never by name.
        self.dims = ParallelDims.from_config(cfg.parallel)
        self._parallel_mesh: ParallelMesh | None = None
        self.dtype_compute = _DTYPES[cfg.model.dtype]
        self.transformer: torch.nn.Module | None = None
        self.model_version = "unknown"
        self.target_modules: list[str] = []
        self.batches_seen = 0  # micro-batches consumed by this rank
        # The data position (data/position.py): each worker role's stream cursor after the last batch
        # trained from it (set by the DataModule when it builds the stream), and where a resumed run's
        # streams start (set when a checkpoint is loaded, read by the DataModule).
        self.data_cursors: list[Any] | None = None
        self.data_start: DataStart | None = None
        self._data_layout: dict[str, Any] | None = None
        self._empty_caption: dict[str, torch.Tensor] | None = None
        self._last_parts: dict[str, Any] = {}  # this rank's last micro-batch (device values), for metrics
        self._metrics: TrainingMetrics | None = None  # the step's one host read (tracking/metrics.py)
        # NaN/Inf steps: skipped, counted, K in a row stop the run (training/nonfinite.py)
        self.nonfinite = NonFiniteGuard(cfg.trainer.max_consecutive_nonfinite)
        self._batch_ids: list[str] = []
        self._deepspeed_skipped_before: int | None = None
        self.sequence_parallel: SequenceParallelGroup | None = None  # set in configure_model
        self.block_offloader: BlockOffloader | None = None  # model.offload_blocks > 0
        # The adapters, listed once training has started (every strategy has set up its parameters by
        # then): the step reads them several times and walking the module tree each time costs ~1 ms.
        self._lora_params: list[torch.nn.Parameter] | None = None

    # -- layout -----------------------------------------------------------------------------------
    @property
    def parallel_mesh(self) -> ParallelMesh:
        """The layout's meshes: built by the ltxdist strategy once its process group exists; without a
        trainer (tools, tests) built here from the process group, if any."""
        if self._parallel_mesh is None:
            strategy = self._trainer.strategy if self._trainer is not None else None
            mesh = getattr(strategy, "parallel_mesh", None)
            if mesh is None:
                device = strategy.root_device if strategy is not None else self.device
                mesh = self.dims.build_mesh(mesh_device_type(device))
            self._parallel_mesh = mesh
        return self._parallel_mesh

    # -- model ------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        """Build on meta, inject LoRA, parallelize, then materialise and load (DESIGN.md order): no
        process ever allocates the full model before it is sharded."""
        if self.transformer is not None:
            return
        info = self.base.info
        self.model_version = info.model_version
        model = self.base.take_model().to(self.dtype_compute)  # meta: no memory yet
        check_transformer_keys(model, info.path)
        spec = LoRASpec(
            rank=self.cfg.lora.rank,
            alpha=self.cfg.lora.alpha,
            dropout=self.cfg.lora.dropout,
            targets=tuple(self.cfg.lora.targets),
            blocks=tuple(self.cfg.lora.blocks) if self.cfg.lora.blocks else None,
            dtype=_DTYPES[self.cfg.lora.dtype],
        )
        self.target_modules = inject_lora(model, spec)
        device = self.trainer.strategy.root_device if self._trainer is not None else self.device
        m = self.cfg.model
        # 8-bit frozen base (ltxdist/quant): on the meta model, before parallel wrappers see it.
        quantized = prepare_quantized_base(
            model, info.path, precision=m.base_precision, fp8_scale=m.fp8_scale, fp8_matmul=m.fp8_matmul
        )
        if m.fp8_matmul:
            check_fp8_matmul_device(device)
        backend = resolve_backend(self.cfg.model.kernels, device)
        if backend != "torch":
            # before parallelize: sharding and compile must wrap the kernel-dispatching modules
            patch_attention_modules(model, backend=backend)
            set_calibration(self.cfg.model.kernels_calibrate)
        if self.dims.sequence > 1:
            # After the kernel patch: its forward still calls attention_function, the seam wrapped here.
            self.sequence_parallel = sequence_parallel_group(self.parallel_mesh)
            install_sequence_parallel(model, self.sequence_parallel)
        model = parallelize_transformer(
            model,
            self.cfg.parallel,
            gradient_checkpointing=self.cfg.model.gradient_checkpointing,
            fsdp_mesh=self.parallel_mesh.fsdp_mesh if self.dims.shards_with_fsdp else None,
            compute_dtype=self.dtype_compute,
        )
        # Materialise straight on this rank's device, only what this rank keeps (its FSDP2 shards /
        # ZeRO-3 partitions), then load the base weights and draw identical adapters on every rank.
        self.block_offloader = materialize_transformer(
            model,
            self.cfg.parallel,
            dims=self.dims,
            checkpoint=info.path,
            dtype=self.dtype_compute,
            lora_init_seed=self.cfg.lora.init_seed,
            device=device,
            offload_blocks=m.offload_blocks,
        )
        self.transformer = model
        if quantized or self.block_offloader is not None:
            # DDP must not broadcast 8-bit or host-resident frozen weights (parallel/offload.py).
            self._ddp_params_and_buffers_to_ignore = ["transformer." + n for n in ddp_ignored_names(model)]

    def lora_parameters(self) -> list[torch.nn.Parameter]:
        assert self.transformer is not None
        if self._lora_params is not None:
            return self._lora_params
        return lora_parameters(self.transformer)

    # -- step -------------------------------------------------------------------------------------
    def _caption_dropout(self, batch: dict[str, Any], gens: list[torch.Generator]) -> dict[str, Any]:
        p = self.cfg.strategy.caption_dropout_p
        if p <= 0:
            return batch
        drop_B = rand_per_sample(gens) < p
        if not bool(drop_B.any()):
            return batch
        if self._empty_caption is None:
            self._empty_caption = load_empty_caption(empty_caption_dir(self.cfg.data))
        batch = dict(batch)
        for key in ("video_context", "audio_context", "context_mask"):
            empty = self._empty_caption[key].to(device=batch[key].device, dtype=batch[key].dtype)
            batch[key] = torch.where(
                drop_B.to(batch[key].device).view(-1, *[1] * empty.ndim), empty.unsqueeze(0), batch[key]
            )
        batch["context_mask_all_ones"] = batch["context_mask_all_ones"] and bool(
            self._empty_caption["context_mask"].bool().all()
        )
        return batch

    def compute_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        assert self.transformer is not None
        gens = sample_generators(self.cfg.run.seed, stream_ids(batch), batch["epochs"])
        batch = self._caption_dropout(batch, gens)
        out: StrategyOutput = self.strategy_impl.prepare(
            batch, dtype=self.dtype_compute, device=self.device, generators=gens
        )
        b = out.video.latent.shape[0] if out.video is not None else out.audio.latent.shape[0]
        perturbations = BatchedPerturbationConfig.empty(b)
        sp = self.sequence_parallel
        if sp is not None:
            # Each rank runs 1/P of the tokens; the predictions come back whole for the loss.
            vx, ax = sequence_parallel_forward(self.transformer, out, sp, perturbations)
        else:
            # Always set (or clear) the strategy's masks: they stay in place for a checkpointed recompute.
            set_attention_masks(self.transformer, out.key_keep, out.query_keep)
            vx, ax = self.transformer(out.video, out.audio, perturbations)
        s = self.cfg.strategy
        total = torch.zeros((), device=self.device)
        # This rank's share of the step's tokens and samples (a sequence-parallel group shares them).
        share = 1.0 / sp.size if sp is not None else 1.0
        parts: dict[str, Any] = {"tokens": out.num_tokens * share, "sample_share": share}
        for name, pred, targets, weight in (
            ("video", vx, out.video_targets, s.video_loss_weight),
            ("audio", ax, out.audio_targets, s.audio_loss_weight),
        ):
            if targets is None or pred is None:
                continue
            per_sample_B = masked_mse_per_sample(pred[:, targets.pred_slice], targets)
            loss = per_sample_B.mean()
            total = total + weight * loss
            parts[f"loss/{name}"] = loss.detach()
            parts[f"sigma_buckets/{name}"] = sigma_bucket_losses(
                per_sample_B, targets.sigma_B, SIGMA_BUCKET_EDGES
            )
        parts["loss/total"] = total.detach()
        return total, parts

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        # LoRA dropout draws from torch's global RNG: reseed it per batch so a resumed run matches (and
        # per sequence-parallel rank, so the ranks' token shards do not share one dropout pattern).
        sp = self.sequence_parallel
        if self.cfg.lora.dropout > 0:
            stream = "|".join(batch["ids"]) + (f"|sp{sp.rank}" if sp is not None else "")
            seed = sample_seed(self.cfg.run.seed, stream, self.batches_seen)
            # Only the generators dropout draws from (torch.manual_seed also queues the seeding of every
            # other accelerator backend, with a stack trace each: ~2 ms of Python per step).
            torch.random.default_generator.manual_seed(seed)
            if self.device.type == "cuda":
                torch.cuda.manual_seed(seed)
        loss, parts = self.compute_loss(batch)
        self.batches_seen += 1
        # Read by TrainingMetrics, which sums the step's micro-batches over ranks. Not self.log: Lightning's
        # logging machinery costs ~3 ms of Python per step and reads each value to the host on its own.
        self._last_parts = parts
        if sp is not None:
            # The data-parallel gradient average also divides by the P ranks that share these samples,
            # whose gradients should add up (parallel/sequence_parallel.py): scale back by P.
            loss = loss * sp.loss_scale
        # A non-finite loss becomes NaN gradients, which the check after gradient reduction sees on every
        # rank, also when the loss's own gradients would be finite. Here rather than in `backward`:
        # DeepSpeed runs its engine's backward on this value and never calls the module's.
        return poison_nonfinite_loss(loss)

    def on_after_backward(self) -> None:
        if self.sequence_parallel is not None:
            # Backward (with any checkpointed recompute) is done: anything else that runs the
            # transformer this step (validation sampling) runs whole sequences on each rank.
            self.sequence_parallel.active = False

    def on_train_start(self) -> None:
        self._lora_params = lora_parameters(self.transformer)
        self._metrics = next((c for c in self.trainer.callbacks if isinstance(c, TrainingMetrics)), None)

    def on_train_end(self) -> None:
        self._lora_params = None

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # One norm per step serves optim/grad_norm and the non-finite check, read to the host together
        # with the step's metrics in the step's one host sync (the decision cannot wait for later).
        grad_norm = total_grad_norm(self.lora_parameters())
        if self._metrics is not None:
            host_norm = self._metrics.read_step(self.trainer, self, grad_norm).get("optim/grad_norm")
        else:  # trained without ltxdist's metrics callback
            host_norm = None if grad_norm is None else float(grad_norm)
        self._skip_nonfinite_step(host_norm)

    # -- non-finite steps (training/nonfinite.py) -------------------------------------------------
    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._batch_ids = list(batch["ids"])  # named in the message when the step is skipped
        # This batch is consumed (trained, or skipped as non-finite): its stream's cursor is the position.
        position = batch.get(CURSOR_KEY)
        if position is not None and self.data_cursors is not None:
            self.data_cursors[position["role"]] = position["cursor"]

    def _nonfinite_detail(self) -> str:
        loss = self._last_parts.get("loss/total")
        local = "non-finite" if loss is not None and not bool(torch.isfinite(loss)) else "finite"
        return f"rank {self.global_rank}: loss {local}, batch ids {self._batch_ids}"

    def _skip_nonfinite_step(self, grad_norm: float | None) -> None:
        step = self.trainer.global_step + 1
        if self.dims.skips_nonfinite_steps_itself:
            # DeepSpeed skips the step itself; counted after it in optimizer_step.
            self._deepspeed_skipped_before = self.trainer.strategy.deepspeed_engine.skipped_steps
            return
        skip = self.nonfinite.decide(grad_norm)
        if skip:
            for p in self.lora_parameters():
                p.grad = None  # AdamW leaves parameters without a gradient (and their moments) alone
        self.nonfinite.record(skip, step=step, detail=self._nonfinite_detail() if skip else "")

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        before, self._deepspeed_skipped_before = self._deepspeed_skipped_before, None
        if before is not None:
            skipped = self.trainer.strategy.deepspeed_engine.skipped_steps > before
            self.nonfinite.record(
                skipped, step=self.trainer.global_step + 1, detail=self._nonfinite_detail() if skipped else ""
            )

    # -- optimizer --------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        opt = build_optimizer(self.lora_parameters(), self.cfg.optim)
        sched = build_scheduler(opt, self.cfg.optim.schedule, self.cfg.optim.lr, self.cfg.trainer.max_steps)
        # interval=step: one scheduler step per optimizer step, whatever the number of processes.
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    # -- checkpoint contents ----------------------------------------------------------------------
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        # Only the adapters: the frozen base comes from the base checkpoint.
        assert self.transformer is not None
        return {"transformer." + k: v.detach() for k, v in lora_state_dict(self.transformer).items()}

    # -- train state (ltxdist.checkpoint; training/checkpointing.py) ---------------------------------
    def data_position(self) -> dict[str, Any]:
        """Where the run's data streams stand, as JSON, saved with every checkpoint (data/position.py):
        every data-parallel rank's stream cursors (gathered: every rank must call this), the micro-batches
        consumed and the layout they refer to."""
        device = self.trainer.strategy.root_device if self._trainer is not None else torch.device("cpu")
        gathered = all_gather_json(self.data_cursors, device)
        # The ranks of one sequence-parallel group (consecutive ranks) read the same data: one per group.
        per_data_rank = gathered[:: self.dims.sequence]
        return saved_position(self._current_data_layout(), self.batches_seen, per_data_rank)

    def counters(self) -> dict[str, Any]:
        return {"nonfinite": self.nonfinite.state_dict()}

    def model_record(self) -> dict[str, Any]:
        return {"model_version": self.model_version, "target_modules": self.target_modules}

    def load_train_state(self, state: Any) -> None:
        """The data position and counters of a checkpoint's train state (ltxdist.checkpoint.TrainState):
        where this rank's streams start (read by the DataModule), from `data_position()`'s record, or
        from a position saved before cursors (its `batches_seen` and the data-parallel size and
        micro-batch size it was written under)."""
        layout = self._current_data_layout()
        data_rank, _ = self._data_parallel()
        if "format" in state.data:
            self.data_start = resume_start(state.data, layout, data_rank)
        else:  # a checkpoint converted from the format before cursors
            written = state.layout or {}
            written_under = (
                {"world_size": written["data_parallel_size"], "micro_batch_size": written["micro_batch_size"]}
                if "data_parallel_size" in written
                else None
            )
            self.data_start = legacy_start(int(state.data.get("batches_seen", 0)), written_under, layout)
        self.batches_seen = self.data_start.batches_seen
        self.nonfinite.load_state_dict(state.counters.get("nonfinite", {}))

    # -- data position (data/position.py) ---------------------------------------------------------
    def _data_parallel(self) -> tuple[int, int]:
        """(this rank's data-parallel rank, the data-parallel size): from the layout's `dp` mesh, whose
        ranks of one sequence-parallel group read the same samples."""
        mesh = self.parallel_mesh
        return mesh.data_rank, mesh.data_size

    def _current_data_layout(self) -> dict[str, Any]:
        if self._data_layout is None:
            _, size = self._data_parallel()
            self._data_layout = stream_layout(self.cfg.data, int(self.cfg.run.seed), size)
        return self._data_layout
