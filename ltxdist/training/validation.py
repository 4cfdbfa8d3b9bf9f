"""Validation sampling during training: fixed prompts and seeds every N steps (optionally at step 0).

The live model samples (LoRA adapters as they are now, scaled by `validation.lora_strength`, in eval
mode), through the same `Sampler` as `ltxdist-sample`, with the strategy's own conditioning and attention
masks (IC reference video with the configured downscale factor; ID-LoRA reference voice + first-frame
image with the masks of training, and identity guidance at `strategy.identity_guidance_scale`), and the
guidance of `validation.*` (STG on video only with `stg_mode=stg_v`).
Jobs (prompt x seed) are spread over ranks; each rank writes its videos under
`RUN/samples/step-000500/`, then rank 0 writes `index.json` and logs the videos to W&B.

Everything that does not change during training is prepared once at the start, by each rank for its own
jobs: prompts encoded with the Gemma text encoder (then released: 24 GB for the real one), references
encoded with the VAEs (their encoders then released; a first-frame image re-compressed at
`validation.image_crf` first, as ltx-pipelines does), guidance checked against the model. A rank without
jobs loads none of it. A broken validation setting fails before the first training step.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from ltxdist.data.media import write_video
from ltxdist.encoders import AudioVAE, VideoVAE
from ltxdist.encoders.text import load_text_encoder
from ltxdist.io import write_json_atomic
from ltxdist.sampling.conditioning import IdReferenceOptions, VideoSpec
from ltxdist.sampling.guidance import Guidance, GuidanceParams
from ltxdist.sampling.loading import lora_strength
from ltxdist.sampling.pipeline import References, Sampler, SampleRequest
from ltxdist.training.agreement import any_rank

log = logging.getLogger("ltxdist")


def samples_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "samples" / f"step-{step:06d}"


@dataclass(frozen=True)
class ValidationJob:
    index: int  # position in prompts x seeds (file names and W&B order)
    prompt_index: int
    request: SampleRequest


def validation_guidance(val_cfg: Any, strategy_cfg: Any) -> Guidance:
    """The guidance of validation sampling: CFG and STG per modality (`stg_mode=stg_v` perturbs the video
    only), and for an ID-LoRA the identity guidance its LoRA file will carry."""
    is_id = strategy_cfg.name == "audio_ref_only_ic"
    return Guidance(
        video=GuidanceParams(
            val_cfg.cfg_scale,
            val_cfg.stg_scale,
            tuple(val_cfg.stg_blocks),
            val_cfg.rescale_scale,
            val_cfg.modality_scale,
        ),
        audio=GuidanceParams(
            val_cfg.audio_cfg_scale,
            val_cfg.stg_scale if val_cfg.stg_mode == "stg_av" else 0.0,
            tuple(val_cfg.stg_blocks),
            val_cfg.rescale_scale,
            val_cfg.modality_scale,
        ),
        identity_scale=float(strategy_cfg.identity_guidance_scale) if is_id else 0.0,
    )


def build_jobs(val_cfg: Any, strategy_cfg: Any) -> list[ValidationJob]:
    """prompts x seeds, each with its references and the strategy's conditioning settings."""
    guidance = validation_guidance(val_cfg, strategy_cfg)
    spec = VideoSpec(val_cfg.width, val_cfg.height, val_cfg.num_frames, val_cfg.fps)
    # Options of strategy=audio_ref_only_ic / video_to_video only (the closed config has them nowhere else).
    id_options = (
        IdReferenceOptions(
            negative_positions=strategy_cfg.use_negative_ref_positions,
            mask_video_to_ref_audio=strategy_cfg.mask_video_to_ref_audio,
            mask_ref_audio_to_text=strategy_cfg.mask_ref_audio_to_text,
        )
        if strategy_cfg.name == "audio_ref_only_ic"
        else IdReferenceOptions()
    )
    jobs = []
    for p, prompt in enumerate(val_cfg.prompts):
        ref = val_cfg.references[p] if val_cfg.references else None
        refs = References(
            video=Path(ref.video) if ref is not None and ref.video else None,
            downscale_factor=int(strategy_cfg.get("reference_downscale_factor", 1)),
            image=Path(ref.image) if ref is not None and ref.image else None,
            image_crf=int(val_cfg.image_crf),
            audio=Path(ref.audio) if ref is not None and ref.audio else None,
        )
        for seed in val_cfg.seeds:
            request = SampleRequest(
                prompt=prompt,
                video=spec,
                seed=int(seed),
                steps=val_cfg.steps,
                negative_prompt=val_cfg.negative_prompt,
                guidance=guidance,
                with_audio=val_cfg.with_audio,
                references=refs,
                id_options=id_options,
            )
            jobs.append(ValidationJob(len(jobs), p, request))
    return jobs


def rank_jobs(
    jobs: list[ValidationJob], rank: int, world: int, lockstep: bool
) -> list[tuple[ValidationJob, bool]]:
    """This rank's (job, write?) list: jobs rank, rank + world, ...; under `lockstep`, padded with
    unwritten repeats so that every rank runs ceil(n / world) samples."""
    mine = [(j, True) for j in jobs[rank::world]]
    if lockstep and jobs:
        want = math.ceil(len(jobs) / world)
        filler = mine[0][0] if mine else jobs[0]
        mine += [(filler, False)] * (want - len(mine))
    return mine


class ValidationSampling(pl.Callback):
    def __init__(
        self, val_cfg: Any, *, run_dir: Path, model_checkpoint: str, strategy_cfg: Any, lockstep: bool
    ):
        self.cfg = val_cfg
        self.run_dir = run_dir
        self.checkpoint = val_cfg.checkpoint or model_checkpoint
        self.jobs = build_jobs(val_cfg, strategy_cfg)
        # Under FSDP2 / HSDP / ZeRO-3 every forward all-gathers: all ranks must run as many (ParallelDims).
        self.lockstep = lockstep
        self._mine: list[tuple[ValidationJob, bool]] = []
        self._sampler: Sampler | None = None
        self._last_step = -1

    # -- preparation --------------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self._mine = rank_jobs(self.jobs, trainer.global_rank, trainer.world_size, self.lockstep)
        # A rank without jobs (fewer jobs than ranks, no lockstep) loads nothing: no Gemma, no VAEs. It
        # only joins each validation's barrier. Preparing involves no collective (every model here is
        # local to the rank; the transformer only counts its blocks), so skipping it cannot hang; but a
        # broken setting then fails only on ranks with jobs, so all ranks agree on failure before going on.
        failure: BaseException | None = None
        if self._mine:
            try:
                self._sampler = self._prepare(pl_module)
            except BaseException as exc:  # a Ctrl-C / SystemExit here too: the others wait in any_rank
                failure = exc
        failed_anywhere = any_rank(trainer, failure is not None)
        if failure is not None:
            raise failure
        if failed_anywhere:
            raise RuntimeError(
                "validation set-up failed on another rank (its log names the cause: a validation.* "
                "setting, e.g. validation.gemma_root or a reference file); this rank stops with it"
            )
        self._last_step = trainer.global_step
        if self.cfg.at_start and trainer.global_step == 0:
            self.run(trainer, pl_module, 0)

    def _prepare(self, pl_module: Any) -> Sampler:
        """This rank's prompts and references encoded, their encoders dropped, the decoders checked."""
        device, dtype = pl_module.device, pl_module.dtype_compute
        with_audio_vae = self.cfg.with_audio or any(j.request.references.audio for j, _ in self._mine)
        # Gemma goes straight into the sampler, which holds the only reference: release_text_encoder()
        # below then frees it (12-24 GB) before the decoders are loaded.
        sampler = Sampler(
            pl_module.transformer,
            video_vae=VideoVAE(self.checkpoint, device, dtype),
            audio_vae=AudioVAE(self.checkpoint, device, dtype) if with_audio_vae else None,
            text=load_text_encoder(
                self.checkpoint,
                self.cfg.gemma_root,
                device=device,
                dtype=dtype,
                text_tokens=self.cfg.text_tokens,
                precision=self.cfg.text_encoder_precision,
            ),
            device=device,
            dtype=dtype,
        )
        blocks = sampler.num_blocks
        for job, _ in self._mine[:1]:
            job.request.guidance.video.check(blocks, "validation.stg_blocks")
            job.request.guidance.audio.check(blocks, "validation.stg_blocks")
        # Neither encoder is needed again: the sampler keeps the contexts and the reference latents (one
        # set per distinct references) for the whole run.
        requests = [job.request for job, _ in self._mine]
        sampler.encode_prompts([t for r in requests for t in (r.prompt, r.negative_prompt)], release=True)
        sampler.encode_reference_sets(requests, release=True)
        # Load and run the decoders once now: a checkpoint without VAE / vocoder weights fails here, not
        # after the first N training steps. (The decoders are needed at every validation anyway.)
        sampler.decode(
            torch.zeros(1, 128, 1, 1, 1, device=device),
            torch.zeros(1, 8, 2, 16, device=device) if self.cfg.with_audio else None,
        )
        return sampler

    # -- every N steps ------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, *args: Any) -> None:
        step = trainer.global_step
        if step != self._last_step and step > 0 and step % self.cfg.every_n_steps == 0:
            self.run(trainer, pl_module, step)
        self._last_step = step

    @torch.no_grad()
    def run(self, trainer: pl.Trainer, pl_module: Any, step: int) -> list[Path]:
        out_dir = samples_dir(self.run_dir, step)
        model = pl_module.transformer
        was_training = model.training
        model.eval()  # no LoRA dropout, no activation checkpointing
        written: list[Path] = []
        try:
            # The LoRA strength the card samples with (1.4 for the IC card): adapters scaled, then restored.
            with lora_strength(model, float(self.cfg.lora_strength)):
                for job, write in self._mine:
                    assert self._sampler is not None, "on_train_start prepares it for a rank with jobs"
                    req = job.request
                    cond = self._sampler.reference_latents(req)  # encoded by _prepare: cached
                    video, audio = self._sampler.denoise(req, cond, progress=False)
                    if not write:
                        continue  # lockstep filler: the forwards were needed, the video is not
                    frames, wave = self._sampler.decode(video, audio)
                    name = f"{job.index:02d}_p{job.prompt_index:02d}_seed{req.seed}.mp4"
                    written.append(write_video(out_dir / name, frames, req.video.fps, audio=wave))
        finally:
            model.train(was_training)
        trainer.strategy.barrier("ltxdist-validation")
        if trainer.is_global_zero:
            self._publish(trainer, step, out_dir)
        return written

    def settings(self) -> dict[str, Any]:
        """What every video of a step was sampled with (the same for all jobs but prompt and seed)."""
        if not self.jobs:
            return {}
        req = self.jobs[0].request
        return {
            "lora_strength": float(self.cfg.lora_strength),
            "steps": req.steps,
            "negative_prompt": req.negative_prompt,
            "video": asdict(req.video),
            "with_audio": req.with_audio,
            "guidance": {
                "video": {**asdict(req.guidance.video), "stg_blocks": list(req.guidance.video.stg_blocks)},
                "audio": {**asdict(req.guidance.audio), "stg_blocks": list(req.guidance.audio.stg_blocks)},
                "identity_scale": req.guidance.identity_scale,
            },
        }

    def _publish(self, trainer: pl.Trainer, step: int, out_dir: Path) -> None:
        entries = []
        for job in self.jobs:
            path = out_dir / f"{job.index:02d}_p{job.prompt_index:02d}_seed{job.request.seed}.mp4"
            entries.append({"file": path.name, "prompt": job.request.prompt, "seed": job.request.seed})
        write_json_atomic(
            out_dir / "index.json", {"step": step, "settings": self.settings(), "videos": entries}
        )
        found = [(out_dir / e["file"], e) for e in entries if (out_dir / e["file"]).is_file()]
        for logger in trainer.loggers:
            if hasattr(logger, "log_video") and found:
                # Needs the files of every rank on rank 0's filesystem (a shared run directory).
                logger.log_video(
                    "validation/videos",
                    videos=[str(p) for p, _ in found],
                    step=step,
                    caption=[f"{e['prompt']} (seed {e['seed']})" for _, e in found],
                )
        log.info("validation step %d: %d videos in %s", step, len(found), out_dir)
