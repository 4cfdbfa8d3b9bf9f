"""Do cached-latent shards fit the base checkpoint that training will use?

Cached latents only mean something in the latent space of the VAE that made them, and cached text
contexts only for the connectors that made them. Shards prepared for another base (LTX-2 latents fed to
LTX-2.3) or with other encoders train without any error and silently give a useless LoRA, so training
refuses them before any model is built, unless the user overrides it with
`data.allow_model_version_mismatch` / `data.allow_encoder_mismatch`.

Checked per shard directory (`data.path`, or every `data.mix` source):
- `model_version` in index.json against the checkpoint's, on major.minor (as for LoRA files);
- each encoder fingerprint recorded in index.json that the checkpoint can also provide (video VAE, audio
  VAE, text connectors; present only when the checkpoint file holds those weights) against the same
  fingerprint computed from the checkpoint. Gemma lives outside the checkpoint and is not compared.

Shards an older revision of ltxdist-prepare wrote (prepare/revision.py: ltxdist has since fixed how
samples are made) are still usable, so they only get a warning naming what changed and how to re-prepare.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import safe_open

from ltxdist.data.prepare.revision import PREPARE_REVISION, changes_note, recorded_revision
from ltxdist.data.shards import ShardIndex, ShardIndexError, load_index
from ltxdist.models.checkpoint_file import CheckpointInfo, major_minor

log = logging.getLogger(__name__)

MODEL_VERSION_FLAG = "data.allow_model_version_mismatch"
ENCODER_FLAG = "data.allow_encoder_mismatch"
# Written into index.json by every ltxdist-prepare since the first: the data of other writers
# (ltxdist-synthetic-data, a hand-made index) has no preparation revision to compare.
PREPARED_MARK = "prepare_run"


@dataclass(frozen=True)
class CheckpointComponent:
    """Weights of one encoder inside an LTX checkpoint, and the config sections its fingerprint covers.

    Must match what `ltxdist.encoders.encoder_fingerprints` hashes at preprocessing time (a test holds
    the two together)."""

    prefixes: tuple[str, ...]
    config_sections: tuple[str, ...]


CHECKPOINT_COMPONENTS: dict[str, CheckpointComponent] = {
    "video_vae": CheckpointComponent(("vae.",), ("vae",)),
    "audio_vae": CheckpointComponent(("audio_vae.",), ("audio_vae",)),
    "text_connectors": CheckpointComponent(
        (
            "text_embedding_projection.",
            "model.diffusion_model.video_embeddings_connector.",
            "model.diffusion_model.audio_embeddings_connector.",
        ),
        ("transformer",),
    ),
}


class ShardCompatibilityError(ShardIndexError):
    """Shards were prepared for another base model version or with other encoders than the checkpoint."""


@dataclass(frozen=True)
class DataSource:
    flag: str  # the config entry that names this directory, for messages: data.path / data.mix[1] 'bob'
    directory: Path


def data_sources(data_cfg: Any) -> list[DataSource]:
    if data_cfg.mix:
        return [DataSource(f"data.mix[{i}] '{m.name}'", Path(m.path)) for i, m in enumerate(data_cfg.mix)]
    return [DataSource("data.path", Path(data_cfg.path))]


def checkpoint_encoder_fingerprints(info: CheckpointInfo, components: Iterable[str]) -> dict[str, str]:
    """Fingerprints of those `components` whose weights the checkpoint file holds (a transformer-only
    file holds none). Imported lazily: the fingerprint code sits in the encoder package, which pulls in
    the VAEs; only shards written by ltxdist-prepare record fingerprints worth comparing."""
    wanted = [c for c in components if c in CHECKPOINT_COMPONENTS]
    if not wanted:
        return {}
    from ltxdist.encoders.fingerprint import checkpoint_component_fingerprint

    with safe_open(str(info.path), framework="pt") as f:
        keys = list(f.keys())
    out = {}
    for name in wanted:
        component = CHECKPOINT_COMPONENTS[name]
        if any(k.startswith(component.prefixes) for k in keys):
            out[name] = checkpoint_component_fingerprint(
                info.path, info.config, component.prefixes, component.config_sections
            )
    return out


def check_shards_fit_checkpoint(
    source: DataSource,
    info: CheckpointInfo,
    *,
    allow_model_version_mismatch: bool = False,
    allow_encoder_mismatch: bool = False,
) -> None:
    index = load_index(source.directory)
    where = f"{source.directory} ({source.flag})"
    if major_minor(index.model_version) != major_minor(info.model_version):
        message = (
            f"{where} holds latents prepared for model version {index.model_version}, but model.checkpoint "
            f"{info.path} is model version {info.model_version}: major.minor differ, so the cached latents "
            "are in another latent space and the LoRA would silently learn nothing useful. Re-run "
            f"ltxdist-prepare with --checkpoint {info.path}, or set {MODEL_VERSION_FLAG}=true to train "
            "anyway."
        )
        if not allow_model_version_mismatch:
            raise ShardCompatibilityError(message)
        log.warning("%s=true: %s", MODEL_VERSION_FLAG, message)
    recorded = index.encoder_fingerprints
    ours = checkpoint_encoder_fingerprints(info, recorded)
    changed = sorted(name for name, fp in ours.items() if recorded[name] != fp)
    if changed:
        message = (
            f"{where} was encoded with other encoder weights than model.checkpoint {info.path} holds "
            f"({', '.join(changed)}: fingerprints in index.json differ), so its latents or text contexts do "
            f"not match this base. Re-run ltxdist-prepare with --checkpoint {info.path}, or, if it is the "
            f"same model stored differently, set {ENCODER_FLAG}=true to train anyway."
        )
        if not allow_encoder_mismatch:
            raise ShardCompatibilityError(message)
        log.warning("%s=true: %s", ENCODER_FLAG, message)


def check_data_fits_checkpoint(data_cfg: Any, info: CheckpointInfo) -> None:
    """Refuse (before any model is built) shard directories that do not fit the base checkpoint whose
    header `info` is (read_checkpoint_info: the training start-up reads it once for all its checks)."""
    for source in data_sources(data_cfg):
        check_shards_fit_checkpoint(
            source,
            info,
            allow_model_version_mismatch=bool(data_cfg.allow_model_version_mismatch),
            allow_encoder_mismatch=bool(data_cfg.allow_encoder_mismatch),
        )


def older_preparation_warning(source: DataSource, index: ShardIndex) -> str:
    """The start-up warning for shards an older revision of ltxdist-prepare wrote (none recorded:
    revision 1), naming what changed since and how to re-prepare; "" for shards of this revision or a
    newer one, and for shards ltxdist-prepare did not write."""
    if PREPARED_MARK not in index.extra:
        return ""
    revision = recorded_revision(index.extra)
    if revision >= PREPARE_REVISION:
        return ""
    where = source.directory
    return "\n".join(
        [
            f"{where} ({source.flag}) was prepared by ltxdist-prepare revision {revision}; this ltxdist "
            f"prepares revision {PREPARE_REVISION}. Samples prepared since then differ:",
            changes_note(revision),
            "Training goes on with the data as it is. To re-prepare it, run the ltxdist-prepare command "
            f"that wrote it again with --overwrite added (ltxdist-prepare INPUT --out {where} ... "
            "--overwrite), or into a new --out. To run.resume=auto, re-prepared data is other data: "
            "continue a run on it with run.resume=force, or start a new one (run.name=NEW).",
        ]
    )


def warn_about_older_preparations(data_cfg: Any) -> None:
    """Warn once per shard directory (`data.path`, or each `data.mix` source) that an older revision of
    ltxdist-prepare wrote (older_preparation_warning). Rank 0's training start-up calls it."""
    seen: set[Path] = set()
    for source in data_sources(data_cfg):
        if source.directory in seen:  # one folder mixed in twice is one dataset
            continue
        seen.add(source.directory)
        message = older_preparation_warning(source, load_index(source.directory))
        if message:
            log.warning(message)


# Training strategies that read references from the shards (ltxdist-prepare --strategy of the same name).
_REFERENCE_STRATEGIES = ("video_to_video", "audio_ref_only_ic")


def check_data_fits_strategy(data_cfg: Any, strategy_cfg: Any) -> None:
    """Refuse (before any model is built) shards prepared for another strategy's references, or IC-LoRA
    references downscaled by another factor than strategy.reference_downscale_factor: otherwise the first
    batch fails, after the model has loaded (minutes at 22B). Shards that do not record how they were
    prepared (synthetic data, older shards) are checked batch by batch by the strategy, as before."""
    name = strategy_cfg.name
    if name not in _REFERENCE_STRATEGIES:
        return
    for source in data_sources(data_cfg):
        extra = load_index(source.directory).extra
        where = f"{source.directory} ({source.flag})"
        prepared_for = extra.get("strategy")
        if prepared_for is not None and prepared_for != name:
            raise ShardCompatibilityError(
                f"{where} was prepared with --strategy {prepared_for}, which writes no references for "
                f"strategy={name}: re-run ltxdist-prepare with --strategy {name}"
            )
        factor = extra.get("reference_downscale_factor")
        if name == "video_to_video" and factor is not None:
            wanted = int(strategy_cfg.reference_downscale_factor)
            if int(factor) != wanted:
                raise ShardCompatibilityError(
                    f"{where} holds references downscaled by {factor} (ltxdist-prepare "
                    f"--reference-downscale-factor), but strategy.reference_downscale_factor={wanted}: set "
                    f"strategy.reference_downscale_factor={factor}, or re-prepare the data"
                )
