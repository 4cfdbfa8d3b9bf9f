"""The evaluation protocol: checkpoints x prompts x seeds x strengths, a bleed test and the base model.

For each LoRA checkpoint, one contact sheet: a row per (prompt, seed), then a row per (bleed prompt,
seed) (the prompt without the trigger word: a LoRA that changes these rows "bleeds" into everything);
a column for the base model (no LoRA), then one per strength. Every cell is also written as its own
mp4 with audio. `summary.json` / `summary.md` list each cell with its mean absolute difference from the
base model's cell (same prompt and seed): the LoRA's effect where wanted (trigger rows) and where not
(bleed rows).

The base model is loaded once; each checkpoint's adapters are loaded into live LoRA layers whose
output is scaled per strength (ltxdist's injection), instead of re-fusing the 22B weights per strength.
Legend: F frames, H height, W width.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from ltxdist.io import write_bytes_atomic, write_json_atomic
from ltxdist.lora import read_lora_file, read_lora_header
from ltxdist.lora.comfy_format import LoRAFile
from ltxdist.sampling.defaults import DEFAULT_STRENGTHS
from ltxdist.sampling.loading import (
    check_loras_load_in_turn,
    inject_lora_file,
    load_lora_weights,
    lora_strength,
)
from ltxdist.sampling.pipeline import Sampler, SampleRequest, SampleResult, write_sample
from ltxdist.sampling.sheet import cell_size, mean_abs_diff, resize, tile, write_contact_sheet


def remove_trigger(prompt: str, trigger: str) -> str:
    """The prompt without the trigger word(s), for the bleed test."""
    out = re.sub(rf"(?<!\w){re.escape(trigger)}(?!\w)", " ", prompt)
    out = re.sub(r"\s+", " ", out).strip(" ,")
    if out == prompt.strip():
        raise ValueError(f"--trigger {trigger!r} does not occur in --prompt {prompt!r}")
    if not out:
        raise ValueError(f"--prompt {prompt!r} is only the trigger; pass --bleed-prompt explicitly")
    return out


@dataclass(frozen=True)
class GridRow:
    prompt: str
    seed: int
    bleed: bool


@dataclass(frozen=True)
class GridSpec:
    loras: tuple[Path, ...]
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    strengths: tuple[float, ...] = DEFAULT_STRENGTHS
    bleed_prompts: tuple[str, ...] = ()
    sheet_max_width: int = 2048

    def rows(self) -> list[GridRow]:
        return [GridRow(p, s, False) for p in self.prompts for s in self.seeds] + [
            GridRow(p, s, True) for p in self.bleed_prompts for s in self.seeds
        ]

    def check(self) -> None:
        if not self.loras:
            raise ValueError("grid: pass at least one --lora (or --lora-dir with LoRA files)")
        if not self.prompts or not self.seeds:
            raise ValueError("grid: pass at least one --prompt and one --seeds value")
        if not self.bleed_prompts:
            raise ValueError(
                "grid: the bleed test needs --trigger (to strip from the prompts) or --bleed-prompt"
            )
        if any(s <= 0 for s in self.strengths):
            raise ValueError(f"--strengths must be > 0 (the base column is strength 0), got {self.strengths}")
        stems = [p.stem for p in self.loras]
        twins = sorted({stem for stem in stems if stems.count(stem) > 1})
        if twins:
            # Each LoRA's cells, sheet and summary rows are keyed by its file name: two runs' files of one
            # name would overwrite each other's videos and mix in the summary.
            raise ValueError(
                f"grid: several --lora files are named {twins}; their outputs would overwrite each other. "
                "Copy or link them under distinct names (e.g. runA_step500.safetensors)"
            )


@dataclass
class CellRecord:
    checkpoint: str
    step: str
    row: int
    prompt: str
    seed: int
    bleed: bool
    strength: float
    file: str
    video_delta_vs_base: float | None
    audio_delta_vs_base: float | None


def _delta(result: SampleResult, base: SampleResult) -> tuple[float, float | None]:
    video = mean_abs_diff(result.frames_FHWC, base.frames_FHWC)
    audio = None
    if result.audio is not None and base.audio is not None:
        audio = mean_abs_diff(result.audio[0], base.audio[0])
    return video, audio


class GridRunner:
    def __init__(
        self, sampler: Sampler, template: SampleRequest, *, base_model_version: str, force: bool = False
    ):
        self.sampler, self.template = sampler, template
        self.base_model_version, self.force = base_model_version, force
        self._injected = False

    def _request(self, row: GridRow) -> SampleRequest:
        return replace(self.template, prompt=row.prompt, seed=row.seed)

    def _load(self, lora: LoRAFile) -> None:
        model = self.sampler.transformer
        if self._injected and load_lora_weights(
            model, lora, base_model_version=self.base_model_version, force=self.force
        ):
            return
        if self._injected:
            raise ValueError(
                f"{lora.path}: its adapters differ in modules or rank from the previous checkpoint's; "
                "run the grid separately for it"
            )
        inject_lora_file(model, lora, base_model_version=self.base_model_version, force=self.force)
        self._injected = True

    def run(self, spec: GridSpec, out_dir: Path, *, progress: bool = True) -> list[CellRecord]:
        spec.check()
        # Every file's problems before any sampling (the base column alone takes minutes at 22B); the
        # tensors are read below, one file at a time.
        check_loras_load_in_turn(
            self.sampler.transformer,
            [read_lora_header(path) for path in spec.loras],
            base_model_version=self.base_model_version,
            force=self.force,
        )
        rows = spec.rows()
        # Every cell shares the template's references: encoded once here, then the VAE encoders freed so
        # that they do not hold device memory through every cell's denoising.
        self.sampler.encode_reference_sets([self._request(row) for row in rows], release=True)
        fps = self.template.video.fps
        cw, ch = cell_size(
            self.template.video.width,
            self.template.video.height,
            1 + len(spec.strengths),
            spec.sheet_max_width,
        )
        records: list[CellRecord] = []
        base: list[SampleResult] = []
        for i, row in enumerate(rows):  # the base model, once for every checkpoint's sheet
            result = self.sampler.generate(self._request(row), progress=progress)
            path = write_sample(out_dir / "base" / f"r{i:02d}.mp4", result, fps)
            records.append(
                CellRecord("base", "", i, row.prompt, row.seed, row.bleed, 0.0, str(path), None, None)
            )
            base.append(result)
        for path in spec.loras:
            lora = read_lora_file(path)  # a rank-128 file is ~1 GB: never all of them at once
            self._load(lora)
            name = lora.path.stem
            # cells are shrunk to the sheet's cell size as they come: a 22B grid holds GBs of frames
            sheet_rows: list[list[torch.Tensor]] = [[resize(b.frames_FHWC, cw, ch)] for b in base]
            for i, row in enumerate(rows):
                for strength in spec.strengths:
                    with lora_strength(self.sampler.transformer, strength):
                        result = self.sampler.generate(self._request(row), progress=progress)
                    path = write_sample(out_dir / name / f"r{i:02d}_s{strength:g}.mp4", result, fps)
                    dv, da = _delta(result, base[i])
                    step = lora.metadata.get("step", "")
                    records.append(
                        CellRecord(
                            name, step, i, row.prompt, row.seed, row.bleed, strength, str(path), dv, da
                        )
                    )
                    sheet_rows[i].append(resize(result.frames_FHWC, cw, ch))
            write_contact_sheet(out_dir / name / "contact_sheet.mp4", tile(sheet_rows, cw, ch), fps)
        write_summary(out_dir, spec, rows, records)
        return records


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _deltas(r: CellRecord) -> list[str]:
    return [_fmt(r.video_delta_vs_base), _fmt(r.audio_delta_vs_base)]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)] + [
        "| " + " | ".join(r) + " |" for r in rows
    ]


def write_summary(out_dir: Path, spec: GridSpec, rows: list[GridRow], records: list[CellRecord]) -> None:
    """summary.json (layout + every cell) and summary.md (per-checkpoint effect / bleed, then every cell)."""
    columns = ["base"] + [f"strength {s:g}" for s in spec.strengths]
    write_json_atomic(
        out_dir / "summary.json",
        {
            "layout": {"rows": [asdict(r) for r in rows], "columns": columns},
            "cells": [asdict(r) for r in records],
        },
    )
    overview = []
    for name in dict.fromkeys(r.checkpoint for r in records if r.checkpoint != "base"):
        for s in spec.strengths:
            cells = [r for r in records if r.checkpoint == name and r.strength == s]
            trig = _mean([r.video_delta_vs_base for r in cells if not r.bleed])
            bleed = _mean([r.video_delta_vs_base for r in cells if r.bleed])
            ratio = f"{bleed / trig:.2f}" if trig and bleed is not None else "-"
            overview.append([name, cells[0].step, f"{s:g}", _fmt(trig), _fmt(bleed), ratio])
    cell_rows = [
        [
            r.checkpoint,
            str(r.row),
            r.prompt,
            str(r.seed),
            str(r.bleed),
            f"{r.strength:g}",
            *_deltas(r),
            r.file,
        ]
        for r in records
    ]
    layout = "; ".join(
        f"{i}: {'[bleed] ' if r.bleed else ''}{r.prompt!r} seed {r.seed}" for i, r in enumerate(rows)
    )
    lines = [
        "# LoRA evaluation grid",
        "",
        "Contact sheet per checkpoint: `<checkpoint>/contact_sheet.mp4` (+ `.png`, its middle frame).",
        "Columns: " + ", ".join(columns) + ".",
        "Rows: " + layout + ".",
        "",
        "Mean |LoRA - base| per pixel (0..1): trigger rows should move, bleed rows should not.",
        "",
        *_table(
            ["checkpoint", "step", "strength", "trigger rows", "bleed rows", "bleed / trigger"], overview
        ),
        "",
        *_table(
            [
                "checkpoint",
                "row",
                "prompt",
                "seed",
                "bleed",
                "strength",
                "video delta",
                "audio delta",
                "file",
            ],
            cell_rows,
        ),
    ]
    write_bytes_atomic(out_dir / "summary.md", ("\n".join(lines) + "\n").encode())


def load_summary(out_dir: Path) -> dict:
    return json.loads((out_dir / "summary.json").read_text())
