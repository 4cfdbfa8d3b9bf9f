"""`ltxdist-export`: inspect, convert or merge a trained LoRA.

ltxdist-export inspect LORA                         metadata, modules, ranks
ltxdist-export merge --base CKPT --lora LORA [--strength S] --out MERGED   full checkpoint with W += S*B@A
                                                    (bf16, or the official FP8 layout re-quantized);
                                                    --force replaces an existing --out,
                                                    --ignore-base-version takes a LoRA of another base
ltxdist-export convert --lora IN --out OUT          rewrite keys to the ComfyUI layout (fixes a
                                                    'model.diffusion_model.' prefix), bf16
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

# Each command imports what it uses: `--help` and argument errors answer without loading torch.


def cmd_inspect(args: argparse.Namespace) -> None:
    from ltxdist.lora.comfy_format import A_SUFFIX, read_lora_header

    lora = read_lora_header(args.lora)  # shapes and metadata: no tensor is read (a rank-128 file is ~1 GB)
    ranks = sorted({int(lora.shapes[m + A_SUFFIX][0]) for m in lora.modules})
    # transformer_blocks.{i}.{module}; other names (a file from elsewhere) are listed under modules only
    in_blocks = [m.split(".", 2) for m in lora.modules if m.startswith("transformer_blocks.")]
    in_blocks = [parts for parts in in_blocks if len(parts) == 3 and parts[1].isdigit()]
    blocks = sorted({int(parts[1]) for parts in in_blocks})
    kinds = sorted({parts[2] for parts in in_blocks})
    print(
        json.dumps(
            {
                "path": str(lora.path),
                "metadata": lora.metadata,
                "num_modules": len(lora.modules),
                "ranks": ranks,
                "blocks": blocks,
                "module_kinds": kinds,
            },
            indent=2,
        )
    )


class OutputWouldDestroyInputError(ValueError):
    """--out names an input file, or an existing file without --force."""


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths reach the same file: equal after resolving symlinks, or one inode (a hard link)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def check_output_path(out: Path, inputs: dict[str, Path], force: bool) -> None:
    """Refuse an --out that would replace an input (whatever --force says) or, without --force, any
    existing file: a merged 22B base is 44 GB, and its download is lost if overwritten."""
    for flag, path in inputs.items():
        if _same_file(out, path):
            raise OutputWouldDestroyInputError(
                f"--out {out} is the {flag} file itself ({path}); writing there would destroy an input: "
                "choose another --out"
            )
    if (out.exists() or out.is_symlink()) and not force:
        raise OutputWouldDestroyInputError(f"--out {out} already exists: pass --force to replace it")


def cmd_merge(args: argparse.Namespace) -> None:
    check_output_path(args.out, {"--base": args.base, "--lora": args.lora}, args.force)
    from tqdm import tqdm

    from ltxdist.lora.comfy_format import check_base_version, read_lora_file
    from ltxdist.lora.merge_file import merge_lora_into_checkpoint
    from ltxdist.models.checkpoint_file import TRANSFORMER_PREFIX, read_checkpoint_info

    info = read_checkpoint_info(args.base)
    lora = read_lora_file(args.lora)
    check_base_version(
        lora, info.model_version, force=args.ignore_base_version, override="--ignore-base-version"
    )
    metadata = dict(info.metadata)
    # A base that is itself a merge keeps the record of what was merged into it before.
    merged_before = json.loads(metadata.get("merged_loras", "[]"))
    metadata["merged_loras"] = json.dumps(
        [*merged_before, {"path": str(lora.path), "strength": args.strength}]
    )
    # A bar on a terminal only (disable=None): a 22B merge reads and writes 44 GB.
    with tqdm(total=info.path.stat().st_size, unit="B", unit_scale=True, desc="merge", disable=None) as bar:
        n = merge_lora_into_checkpoint(
            info.path,
            lora,
            args.out,
            strength=args.strength,
            prefix=TRANSFORMER_PREFIX,
            metadata=metadata,
            on_tensor=bar.update,
        )
    print(f"merged {n} adapters into {args.out}")


def cmd_convert(args: argparse.Namespace) -> None:
    check_output_path(args.out, {"--lora": args.lora}, args.force)
    import torch
    from safetensors import safe_open

    from ltxdist.io import save_safetensors_atomic, write_bytes_atomic
    from ltxdist.lora.comfy_format import COMFY_PREFIX, LoRAFileError, read_lora_file

    src = Path(args.lora)
    if src.suffix != ".safetensors" or not src.is_file():
        read_lora_file(src)  # raises the error naming the file (missing, or a pickle-based format)
    try:
        with safe_open(str(src), framework="pt") as f:
            metadata = f.metadata() or {}
            raw = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except Exception as exc:  # safetensors raises its own error type for a damaged file
        raise LoRAFileError(f"{src} is not a readable safetensors file: {exc}") from exc
    out = {}
    for key, value in raw.items():
        name = key.removeprefix("model.").removeprefix(COMFY_PREFIX)
        out[COMFY_PREFIX + name] = value.to(torch.bfloat16)
    # Check the result before writing it: a failed conversion must not leave an unusable --out file.
    with tempfile.TemporaryDirectory() as scratch:
        probe = Path(scratch) / src.name
        save_safetensors_atomic(out, probe, metadata=metadata)
        try:
            read_lora_file(probe)
        except LoRAFileError as exc:
            raise LoRAFileError(str(exc).replace(str(probe), str(src))) from exc
        write_bytes_atomic(args.out, probe.read_bytes())
    print(f"wrote {args.out} ({len(out)} tensors)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ltxdist-export", description="Inspect, convert or merge LoRA files"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect")
    p.add_argument("lora", type=Path)
    p.set_defaults(fn=cmd_inspect)
    p = sub.add_parser("merge")
    p.add_argument("--base", type=Path, required=True)
    p.add_argument("--lora", type=Path, required=True)
    p.add_argument("--strength", type=float, default=1.0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--force", action="store_true", help="replace an existing --out (never --base or --lora themselves)"
    )
    p.add_argument(
        "--ignore-base-version",
        action="store_true",
        help="merge a LoRA trained on another base model version (major.minor) or one that names none",
    )
    p.set_defaults(fn=cmd_merge)
    p = sub.add_parser("convert")
    p.add_argument("--lora", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--force", action="store_true", help="replace an existing --out (never --lora itself)")
    p.set_defaults(fn=cmd_convert)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from ltxdist.lora.comfy_format import LoRAFileError

    try:
        args.fn(args)
    except (LoRAFileError, ValueError, OSError) as exc:  # OSError: a missing file, a full disk
        print(f"ltxdist-export: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
