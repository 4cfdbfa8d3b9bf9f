"""The baseline users have today, for side-by-side benchmarks: ltx-core's model and loader, PEFT LoRA on
the same target modules, a plain PyTorch loop, one tensor file per sample (the reference trainer's
layout). Written to run with the same settings as an ltxdist run and to log the same way (a jsonl line
per optimizer step with the wall time), so the two can be timed by one harness.

Per-sample files are safetensors here rather than the reference trainer's torch.save `.pt` files:
ltxdist does not ship pickle loading, and pickle would only make the baseline slower.

    python benchmarks/baseline_trainer.py --checkpoint CKPT --data DIR --out LOG.jsonl --steps 50
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

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


def logit_normal_sigma(b: int, generator: torch.Generator) -> torch.Tensor:
    return torch.sigmoid(torch.randn(b, generator=generator))


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
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--fps", type=float, default=24.0)
    args = parser.parse_args(argv)

    from peft import LoraConfig, inject_adapter_in_model

    dtype = getattr(torch, args.dtype)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = SingleGPUModelBuilder(
        model_class_configurator=LTXModelConfigurator,
        model_path=str(args.checkpoint),
        model_sd_ops=LTXV_MODEL_COMFY_RENAMING_MAP,
    ).build(device=device, dtype=dtype)
    for p in model.parameters():
        p.requires_grad_(False)
    model = inject_adapter_in_model(
        LoraConfig(r=args.rank, lora_alpha=args.rank, target_modules=args.targets), model
    )
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
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
                video = batch["video_latents"].to(device=device, dtype=torch.float32)
                audio = batch["audio_latents"].to(device=device, dtype=torch.float32)
                b, c, f, h, w = video.shape
                vtools = VideoLatentTools(
                    VideoLatentPatchifier(1), VideoLatentShape(b, c, f, h, w), fps=args.fps
                )
                atools = AudioLatentTools(AudioPatchifier(1), AudioLatentShape(b, *audio.shape[1:]))
                v_state = vtools.create_initial_state(device, dtype, initial_latent=video)
                a_state = atools.create_initial_state(device, dtype, initial_latent=audio)
                sigma = logit_normal_sigma(b, gen).to(device)
                v_noise = torch.randn(v_state.latent.shape, generator=gen).to(device)
                a_noise = torch.randn(a_state.latent.shape, generator=gen).to(device)
                s3 = sigma.view(b, 1, 1)
                v_x0, a_x0 = v_state.latent.float(), a_state.latent.float()
                v_in = Modality(
                    latent=((1 - s3) * v_x0 + s3 * v_noise).to(dtype),
                    sigma=sigma,
                    timesteps=sigma.view(b, 1).expand(b, v_x0.shape[1]),
                    positions=v_state.positions,
                    context=batch["video_context"].to(device=device, dtype=dtype),
                )
                a_in = Modality(
                    latent=((1 - s3) * a_x0 + s3 * a_noise).to(dtype),
                    sigma=sigma,
                    timesteps=sigma.view(b, 1).expand(b, a_x0.shape[1]),
                    positions=a_state.positions,
                    context=batch["audio_context"].to(device=device, dtype=dtype),
                )
                vx, ax = model(v_in, a_in, BatchedPerturbationConfig.empty(b))
                loss = ((vx.float() - (v_noise - v_x0)) ** 2).mean() + (
                    (ax.float() - (a_noise - a_x0)) ** 2
                ).mean()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                log.write(json.dumps({"step": step, "loss": float(loss), "wall_time": time.time()}) + "\n")
                log.flush()
                if step >= args.steps:
                    break


if __name__ == "__main__":
    main()
