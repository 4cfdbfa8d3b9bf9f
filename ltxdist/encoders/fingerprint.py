"""Cheap, content-sensitive fingerprints of encoder weights, recorded in a shard index.

Hashing a 44 GB checkpoint would take minutes, so a fingerprint hashes the component's config section,
every tensor's name, dtype and shape, and the first and last KiB of every tensor's bytes (read from
the safetensors header offsets, no tensor is loaded). A re-trained or re-quantised VAE changes it; a
re-saved identical file does not.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

_EDGE_BYTES = 1024


def _safetensors_header(path: Path) -> tuple[int, dict[str, Any]]:
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return 8 + length, json.loads(f.read(length))


def hash_safetensors(paths: Iterable[Path], include: Callable[[str], bool], extra: Any = None) -> str:
    digest = hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode())
    for path in sorted(Path(p) for p in paths):
        start, header = _safetensors_header(path)
        with open(path, "rb") as f:
            for name in sorted(k for k in header if k != "__metadata__" and include(k)):
                entry = header[name]
                begin, end = (start + o for o in entry["data_offsets"])
                digest.update(f"{name}|{entry['dtype']}|{entry['shape']}".encode())
                f.seek(begin)
                digest.update(f.read(min(_EDGE_BYTES, end - begin)))
                f.seek(max(begin, end - _EDGE_BYTES))
                digest.update(f.read(end - max(begin, end - _EDGE_BYTES)))
    return digest.hexdigest()[:16]


def checkpoint_component_fingerprint(
    checkpoint: Path, config: dict[str, Any], prefixes: tuple[str, ...], config_sections: tuple[str, ...]
) -> str:
    section = {s: config.get(s) for s in config_sections}
    return hash_safetensors([checkpoint], lambda k: k.startswith(prefixes), extra=section)


def folder_fingerprint(root: Path, text_tokens: int) -> str:
    """Gemma folder: weights (as above), its config and the exact tokenizer files."""
    digest = hashlib.sha256(f"text_tokens={text_tokens}".encode())
    for name in ("config.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json"):
        path = root / name
        if path.is_file():
            digest.update(name.encode() + path.read_bytes())
    digest.update(hash_safetensors(sorted(root.glob("*.safetensors")), lambda k: True).encode())
    return digest.hexdigest()[:16]
