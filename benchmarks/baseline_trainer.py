"""The baseline users have today, for side-by-side benchmarks: ltx-core's model and loader, PEFT LoRA on
the same target modules, a plain PyTorch loop, one tensor file per sample (the reference trainer's
layout). Written to run with the same settings as an ltxdist run and to log the same way (a jsonl line
per optimizer step with the wall time), so the two can be timed by one harness.

Per-sample files are safetensors here rather than the reference trainer's torch.save `.pt` files:
ltxdist does not ship pickle loading, and pickle would only make the baseline slower. Adapters are kept
in float32 as PEFT's `get_peft_model` does by default (`autocast_adapter_dtype=True`); PEFT then runs
the adapter path in float32. `--adapter-dtype base` keeps them in the model's dtype instead.

The step itself (`baseline_step`) is also imported by benchmarks/fullsize_bench.py for the GPU runs.

    python benchmarks/baseline_trainer.py --checkpoint CKPT --data DIR --out LOG.jsonl --steps 50
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import ltx_core.loader  # noqa: F401  (first: avoids ltx-core's circular import)
import torch
from ltx_core.components.patchifiers import AudioPatchifier, VideoLatentPatchifier
from ltx_core.guidance.perturbations import BatchedPerturbationConfig
from ltx_core.loader import SingleGPUModelBuilder
from ltx_core.model.transformer import LTXV_MODEL_COMFY_RENAMING_MAP, LTXModelConfigurator, Modality
from ltx_core.tools import AudioLatentTools, VideoLatentTools
from ltx_core.types import AudioLatentShape, VideoLatentShape
from safetensors.torch import load_file


class PerSampleFiles(torch.utils.data.Dataset):
    """One safetensors file per sample, as `.precomputed/<id>` in the reference trainer."""

    def __init__(self, directory: Path):
        self.files = sorted(directory.glob("*.safetensors"))
        if not self.files:
            raise FileNotFoundError(f"no per-sample files in {directory}")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return load_file(str(self.files[i]))


def inject_peft(
    model: torch.nn.Module, rank: int, targets: list[str], adapter_dtype: torch.dtype | None
) -> list[torch.nn.Parameter]:
    """PEFT LoRA (alpha = rank) on `targets` (full module names); returns the trainable adapter params.
    `adapter_dtype` None keeps PEFT's choice (the base layer's dtype)."""
    from peft import LoraConfig, inject_adapter_in_model

    for p in model.parameters():
        p.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets), model)
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    for p in params:
        if adapter_dtype is not None:
            p.data = p.data.to(adapter_dtype)
        p.requires_grad_(True)
    return params


def strip_peft(model: torch.nn.Module) -> int:
    """Put every PEFT-wrapped layer's base layer back (adapters dropped, nothing merged)."""
    from peft.tuners.lora import LoraLayer

    wrapped = [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    for name, module in wrapped:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, module.get_base_layer())
    model.__dict__.pop("peft_config", None)  # the next injection would warn about a second adapter
    return len(wrapped)


def logit_normal_sigma(b: int, generator: torch.Generator) -> torch.Tensor:
    return torch.sigmoid(torch.randn(b, generator=generator))


def _video_state(latents: torch.Tensor, fps: float, device: torch.device, dtype: torch.dtype) -> Any:
    tools = VideoLatentTools(VideoLatentPatchifier(1), VideoLatentShape(*latents.shape), fps=fps)
    return tools.create_initial_state(device, dtype, initial_latent=latents)


def baseline_step(
    model: torch.nn.Module,
    params: list[torch.nn.Parameter],
    opt: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
    gen: torch.Generator,
    *,
    device: torch.device,
    dtype: torch.dtype,
    fps: float,
) -> torch.Tensor:
    """One optimizer step the way a plain loop does it: ltx-core's latent tools for patchify and
    positions, per-token timesteps, velocity MSE on video (+ audio when the batch has it). An IC-LoRA
    batch (`reference_video_latents`) appends the clean reference tokens (timestep 0, no loss)."""
    video = batch["video_latents"].to(device=device, dtype=torch.float32)
    b = video.shape[0]
    v_state = _video_state(video, fps, device, dtype)
    sigma = logit_normal_sigma(b, gen).to(device)
    s3 = sigma.view(b, 1, 1)
    v_x0 = v_state.latent.float()
    v_noise = torch.randn(v_x0.shape, generator=gen).to(device)
    v_latent = (1 - s3) * v_x0 + s3 * v_noise
    v_timesteps = sigma.view(b, 1).expand(b, v_x0.shape[1])
    v_positions = v_state.positions
    if "reference_video_latents" in batch:
        ref = batch["reference_video_latents"].to(device=device, dtype=torch.float32)
        r_state = _video_state(ref, fps, device, dtype)
        v_latent = torch.cat([v_latent, r_state.latent.float()], dim=1)
        v_timesteps = torch.cat([v_timesteps, torch.zeros(b, r_state.latent.shape[1], device=device)], dim=1)
        v_positions = torch.cat([v_positions, r_state.positions], dim=2)
    v_in = Modality(
        latent=v_latent.to(dtype),
        sigma=sigma,
        timesteps=v_timesteps,
        positions=v_positions,
        context=batch["video_context"].to(device=device, dtype=dtype),
    )
    a_in = None
    if "audio_latents" in batch:
        audio = batch["audio_latents"].to(device=device, dtype=torch.float32)
        atools = AudioLatentTools(AudioPatchifier(1), AudioLatentShape(b, *audio.shape[1:]))
        a_state = atools.create_initial_state(device, dtype, initial_latent=audio)
        a_x0 = a_state.latent.float()
        a_noise = torch.randn(a_x0.shape, generator=gen).to(device)
        a_in = Modality(
            latent=((1 - s3) * a_x0 + s3 * a_noise).to(dtype),
            sigma=sigma,
            timesteps=sigma.view(b, 1).expand(b, a_x0.shape[1]),
            positions=a_state.positions,
            context=batch["audio_context"].to(device=device, dtype=dtype),
        )
    vx, ax = model(v_in, a_in, BatchedPerturbationConfig.empty(b))
    loss = ((vx[:, : v_x0.shape[1]].float() - (v_noise - v_x0)) ** 2).mean()
    if a_in is not None:
        loss = loss + ((ax.float() - (a_noise - a_x0)) ** 2).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="directory of per-sample safetensors files")
    parser.add_argument("--out", type=Path, required=True, help="jsonl log, one line per step")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--targets", nargs="+", required=True, help="full module names to adapt")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--adapter-dtype", default="float32", choices=["float32", "base"])
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--fps", type=float, default=24.0)
    args = parser.parse_args(argv)

    dtype = getattr(torch, args.dtype)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = SingleGPUModelBuilder(
        model_class_configurator=LTXModelConfigurator,
        model_path=str(args.checkpoint),
        model_sd_ops=LTXV_MODEL_COMFY_RENAMING_MAP,
    ).build(device=device, dtype=dtype)
    adapter_dtype = None if args.adapter_dtype == "base" else torch.float32
    params = inject_peft(model, args.rank, args.targets, adapter_dtype)
    opt = torch.optim.AdamW(params, lr=1e-4)
    loader = torch.utils.data.DataLoader(
        PerSampleFiles(args.data),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        drop_last=True,
    )
    gen = torch.Generator().manual_seed(0)
    model.train()
    step = 0
    with open(args.out, "w") as log:
        while step < args.steps:
            for batch in loader:
                loss = baseline_step(model, params, opt, batch, gen, device=device, dtype=dtype, fps=args.fps)
                step += 1
                log.write(json.dumps({"step": step, "loss": float(loss), "wall_time": time.time()}) + "\n")
                log.flush()
                if step >= args.steps:
                    break


if __name__ == "__main__":
    main()
