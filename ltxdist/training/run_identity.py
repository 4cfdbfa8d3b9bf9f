"""What makes a training run *this* run, recorded with every checkpoint and checked before resuming.

`run.resume=auto` continues the newest checkpoint of the run folder. The folder is named after the
experiment unless `run.name` is set, so the same command with other data (a second character), another
learning rate or another LoRA rank would otherwise silently continue the first run and hand back its
LoRA. The identity lists the settings that define a run:

- `model.checkpoint`: the base weights (model version, transformer config and a sample of tensor bytes;
  not the path, so a base copied to node-local disk is the same base),
- `data`: each shard directory's index.json content (not the path: data staged elsewhere is the same),
- `strategy.*`: the training strategy and all its options,
- `lora.rank`, `lora.alpha`, `lora.targets` (expanded), `lora.blocks`,
- `optim.*`: optimizer and schedule.

Not part of it: step counts (train longer), checkpoint cadence, batch size and number of processes
(the data position converts), parallel layout, logging, validation. `trainer.max_steps` is recorded
beside the identity all the same (`horizon`): a linear or cosine schedule decays over it, so training
longer moves the learning rate of the steps still to come, and `schedule_length_change` says by how much.

How it is stored: under `IDENTITY_KEY` in the `extra` fields of every checkpoint's train state
(ltxdist.checkpoint: train_state.json, written atomically with the rest of the checkpoint; the training
entry point hands it to CheckpointAndExport); `identity_in_state` reads it back from a train state
already read (`recorded_identity` from a checkpoint directory), without loading any tensor.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from ltxdist.training.run_dir import complete_checkpoints

if TYPE_CHECKING:
    from ltxdist.checkpoint import TrainState
    from ltxdist.models.checkpoint_file import CheckpointInfo

IDENTITY_KEY = "run_identity"
IDENTITY_FORMAT = 1
# Settings whose change makes the saved adapters a different shape: the checkpoint cannot load at all.
LORA_SHAPE_KEYS = ("lora.rank", "lora.targets", "lora.blocks")


class ResumeRefusedError(ValueError):
    """The newest checkpoint belongs to a run with other settings; the message lists them and the ways on."""


class LoRAShapeMismatchError(ValueError):
    """The checkpoint's adapters have another shape than this run's LoRA (rank, targets or blocks)."""


# -- compute -----------------------------------------------------------------------------------------
def _json(value: Any) -> Any:
    """A config value as plain JSON (lists, dicts, numbers), so saved and fresh values compare equal."""
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def base_fingerprint(info: CheckpointInfo) -> tuple[str, str]:
    """(model version, fingerprint) of the base transformer whose header `info` is (read_checkpoint_info).
    Hashes the transformer config, the names, dtypes and shapes of its tensors and the edge bytes of the
    non-block tensors and block 0 (no tensor is loaded, a 44 GB file costs a few reads): another
    version, a fine-tune or a different architecture changes it; a copy of the same file does not."""
    from ltxdist.encoders.fingerprint import hash_safetensors
    from ltxdist.models.checkpoint_file import TRANSFORMER_PREFIX

    def sampled(name: str) -> bool:
        if not name.startswith(TRANSFORMER_PREFIX):
            return False
        inner = name[len(TRANSFORMER_PREFIX) :]
        return not inner.startswith("transformer_blocks.") or inner.startswith("transformer_blocks.0.")

    extra = {"model_version": info.model_version, "transformer": info.config.get("transformer")}
    return info.model_version, hash_safetensors([info.path], sampled, extra=extra)


def data_fingerprint(directory: Path) -> tuple[str, int | None]:
    """(fingerprint, number of samples) of a shard directory, from its index.json: the shard list with
    per-shard counts, the encoder fingerprints and what preparation recorded (rows, captions, options).
    Another dataset changes it; the same one in another place does not."""
    path = Path(directory) / "index.json"
    try:
        index = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return "missing", None  # training fails later with the error naming data.path
    digest = hashlib.sha256(json.dumps(index, sort_keys=True).encode()).hexdigest()[:16]
    return digest, index.get("num_samples")


def _data_sources(data_cfg: Any) -> list[tuple[str, Path, float]]:
    if data_cfg.mix:
        return [(m.name, Path(m.path), float(m.weight)) for m in data_cfg.mix]
    return [("data.path", Path(data_cfg.path), 1.0)]


def compute_run_identity(cfg: Any, *, checkpoint_info: CheckpointInfo | None = None) -> dict[str, Any]:
    """The identity of the run `cfg` describes: {"fields": {key: value}, "shown": {key: text}}.
    Keys are config flags, so a difference names the flag to look at. `checkpoint_info`: the header of
    model.checkpoint when the caller has read it already (the training start-up reads it once)."""
    from ltxdist.lora.targets import expand_targets
    from ltxdist.models.checkpoint_file import read_checkpoint_info

    fields: dict[str, Any] = {}
    shown: dict[str, str] = {}
    info = checkpoint_info if checkpoint_info is not None else read_checkpoint_info(cfg.model.checkpoint)
    version, fingerprint = base_fingerprint(info)
    fields["model.checkpoint"] = {"model_version": version, "fingerprint": fingerprint}
    shown["model.checkpoint"] = f"{cfg.model.checkpoint} (LTX {version}, weights {fingerprint})"

    sources, texts = [], []
    for name, path, weight in _data_sources(cfg.data):
        digest, samples = data_fingerprint(path)
        sources.append({"name": name, "weight": weight, "fingerprint": digest})
        size = f"{samples} samples, " if samples is not None else ""
        label = f"{path}" if name == "data.path" else f"{name}={path} (weight {weight:g})"
        texts.append(f"{label} ({size}index {digest})")
    fields["data"] = sources
    shown["data"] = "; ".join(texts)

    for key, value in _json(cfg.strategy).items():
        fields[f"strategy.{key}"] = value
    fields["lora.rank"] = int(cfg.lora.rank)
    fields["lora.alpha"] = float(cfg.lora.alpha)
    fields["lora.targets"] = expand_targets(_json(cfg.lora.targets))
    fields["lora.blocks"] = _json(cfg.lora.blocks)
    targets = _json(cfg.lora.targets)
    named = ", ".join(targets) if isinstance(targets, list) else str(targets)
    shown["lora.targets"] = f"{named} ({len(fields['lora.targets'])} module patterns)"
    optim = _json(cfg.optim)
    schedule = optim.pop("schedule", {}) or {}
    for key, value in optim.items():
        fields[f"optim.{key}"] = value
    for key, value in schedule.items():
        fields[f"optim.schedule.{key}"] = value
    horizon = {"trainer.max_steps": int(cfg.trainer.max_steps)}
    return {
        "format": IDENTITY_FORMAT,
        "fields": _json(fields),
        "shown": shown,
        "forced": [],
        "horizon": horizon,
    }


# -- read back ---------------------------------------------------------------------------------------
# The parts of a recorded identity that resuming reads, with the type compute_run_identity writes.
_IDENTITY_PARTS: dict[str, type] = {"fields": dict, "shown": dict, "forced": list, "horizon": dict}


def identity_in_state(state: TrainState) -> dict[str, Any] | None:
    """The identity a checkpoint's train state records; None for one written without it, and for one
    that is not what compute_run_identity writes (a damaged or hand-edited train_state.json: `extra` or
    the identity not an object, or one of its parts of another type). Such a checkpoint resumes as one
    without a record (unchecked, with a warning) instead of failing halfway through the comparison with
    a TypeError that names no file. A part an older ltxdist did not record is simply absent; "fields"
    has been recorded since identities were, so a record without it is damaged."""
    extra = state.extra if isinstance(state.extra, dict) else {}
    identity = extra.get(IDENTITY_KEY)
    # "fields" is what the comparison compares: without it every run would match, silently.
    if not isinstance(identity, dict) or not isinstance(identity.get("fields"), dict):
        return None
    if any(key in identity and not isinstance(identity[key], kind) for key, kind in _IDENTITY_PARTS.items()):
        return None
    return identity


def recorded_identity(checkpoint_dir: Path) -> dict[str, Any] | None:
    """The identity saved with a checkpoint (reads its train_state.json; identity_in_state)."""
    from ltxdist.checkpoint import read_train_state

    return identity_in_state(read_train_state(checkpoint_dir))


# -- compare -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Difference:
    key: str
    checkpoint: str  # the value recorded with the checkpoint, as shown to the user
    this_run: str

    @property
    def changes_lora_shape(self) -> bool:
        return self.key in LORA_SHAPE_KEYS


def _shown(identity: dict[str, Any], key: str) -> str:
    if key in identity.get("shown", {}):
        return identity["shown"][key]
    return json.dumps(identity["fields"][key])


def compare_identities(saved: dict[str, Any], current: dict[str, Any]) -> list[Difference]:
    """Every setting whose value differs. A key one side does not record (a checkpoint from an ltxdist
    with fewer or other settings) is not compared: there is nothing to compare it with."""
    old, new = saved.get("fields", {}), current["fields"]
    return [
        Difference(key, _shown(saved, key), _shown(current, key))
        for key in new
        if key in old and old[key] != new[key]
    ]


# -- decide and explain ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ResumeDecision:
    checkpoint: Path | None  # None: a fresh run
    forced: bool = False  # continued on purpose despite differences
    differences: tuple[Difference, ...] = ()
    unrecorded: bool = False  # the checkpoint predates identity records: resumed unchecked
    # The identity recorded with `checkpoint` (identity_in_state), for the record of a forced
    # continuation and the schedule warning: read once, by decide_resume's caller.
    saved: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    def describe(self) -> str:
        if self.checkpoint is None:
            return "new run"
        text = f"resuming from {self.checkpoint}"
        if self.forced:
            text += f" (run.resume=force: {len(self.differences)} setting(s) changed)"
        elif self.unrecorded:
            text += " (its settings were not recorded: not checked)"
        return text


def new_run_flag(run_cfg: Any) -> str:
    """How to start a new run instead: a new run.name when the folder follows it (the default
    run.dir=runs/${run.name}), otherwise a new run.dir."""
    raw = OmegaConf.to_container(run_cfg, resolve=False) if OmegaConf.is_config(run_cfg) else dict(run_cfg)
    return "run.name=NEW" if "${run.name}" in str(raw.get("dir", "")) else "run.dir=NEW_FOLDER"


def shape_mismatch_message(checkpoint: Path, differences: list[Difference], new_run: str) -> str:
    parts = ", ".join(f"{d.key} {d.checkpoint} -> {d.this_run}" for d in differences)
    return (
        f"{checkpoint} holds LoRA adapters of another shape ({parts}); a run cannot continue with another "
        f"LoRA shape: start a new run ({new_run}) or set those flags back"
    )


def refusal_message(checkpoint: Path, differences: list[Difference], new_run: str, mode: str = "auto") -> str:
    width = max(len(d.key) for d in differences)
    lines = [
        f"run.resume={mode}: {checkpoint} belongs to a run with other settings than this command:",
        *(f"  {d.key:<{width}}  {d.checkpoint}  ->  {d.this_run}" for d in differences),
        "Nothing was changed (config.yaml and the checkpoints are as they were).",
    ]
    shape = [d.key for d in differences if d.changes_lora_shape]
    if shape:
        lines += [
            f"{', '.join(shape)}: another LoRA shape, which that checkpoint cannot continue. The way on:",
            f"  - a new run with these settings: add {new_run} (a folder of its own), or set them back",
        ]
    else:
        lines += [
            "Two ways on:",
            f"  - a new run with these settings: add {new_run} (a folder of its own)",
            "  - continue this run on purpose with the new settings: add run.resume=force (recorded in the "
            "run's log and in its next checkpoints)",
        ]
    return "\n".join(lines)


def decide_resume(
    checkpoint: Path | None,
    mode: str,
    identity: dict[str, Any],
    new_run: str = "run.name=NEW",
    *,
    saved: dict[str, Any] | None,
) -> ResumeDecision:
    """Whether to continue `checkpoint` (the newest of checkpointing.resume_candidates, run.resume=`mode`),
    whose recorded identity is `saved` (identity_in_state of its train state, which the caller has read).

    auto / must: continue only when the recorded identity matches, otherwise ResumeRefusedError listing
    each difference. force, or an explicit checkpoint directory: continue anyway, with the differences
    logged (the caller records them). A LoRA shape difference is refused in every mode. `new_run` is the
    flag that starts a new run instead (new_run_flag)."""
    if checkpoint is None:
        return ResumeDecision(None)
    if saved is None or not set(saved["fields"]) & set(identity["fields"]):
        # Nothing recorded, or nothing recorded that this ltxdist compares (an empty or foreign record):
        # either way no setting was checked, which the caller says instead of reporting a match.
        return ResumeDecision(checkpoint, unrecorded=True)
    differences = compare_identities(saved, identity)
    if not differences:
        return ResumeDecision(checkpoint, saved=saved)
    shape = [d for d in differences if d.changes_lora_shape]
    if mode in ("auto", "must"):
        raise ResumeRefusedError(refusal_message(checkpoint, differences, new_run, mode))
    if shape:
        raise LoRAShapeMismatchError(shape_mismatch_message(checkpoint, shape, new_run))
    return ResumeDecision(checkpoint, forced=True, differences=tuple(differences), saved=saved)


def record_forced_resume(identity: dict[str, Any], decision: ResumeDecision, mode: str) -> str:
    """Keep a forced continuation in the identity, so every later checkpoint of the run says which
    settings changed at which step; returns the line for the run's log (train.log under ltxdist-train)."""
    if not decision.forced or decision.checkpoint is None:
        return ""
    saved = decision.saved or {}
    entry = {
        "at_checkpoint": decision.checkpoint.name,
        "mode": f"run.resume={mode}",
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "changed": {d.key: {"before": d.checkpoint, "after": d.this_run} for d in decision.differences},
    }
    identity["forced"] = [*saved.get("forced", []), entry]
    changes = "; ".join(f"{d.key}: {d.checkpoint} -> {d.this_run}" for d in decision.differences)
    return f"run.resume={mode}: continuing {decision.checkpoint} with changed settings: {changes}"


def schedule_length_change(saved: dict[str, Any] | None, cfg: Any, step: int) -> str:
    """A warning for a run resumed at optimizer step `step` with another `trainer.max_steps` than its
    checkpoint's (whose recorded identity is `saved`: identity_in_state), under a schedule that decays
    over the run's length (linear, cosine): the learning rate of the coming steps follows the new
    length, which is what training longer means, but it is a jump, not the end of the old decay. ""
    when nothing changes."""
    from ltxdist.training.optim import lr_multiplier

    before = ((saved or {}).get("horizon") or {}).get("trainer.max_steps")
    after = int(cfg.trainer.max_steps)
    schedule, lr = cfg.optim.schedule, float(cfg.optim.lr)
    if not isinstance(before, int) or before == after or schedule.name not in ("linear", "cosine"):
        return ""
    old = lr * lr_multiplier(step, cfg=schedule, base_lr=lr, max_steps=before)
    new = lr * lr_multiplier(step, cfg=schedule, base_lr=lr, max_steps=after)
    return (
        f"trainer.max_steps {before} -> {after}: the {schedule.name} learning-rate schedule now decays over "
        f"{after} steps, so step {step + 1} trains at lr {new:.3g} where the checkpoint's schedule had "
        f"{old:.3g}"
    )


def check_finished_run(cfg: Any, new_run: str) -> None:
    """A finished run (a curriculum stage) is reused only if it was trained with these settings: the
    identity of its newest checkpoint must match, as for run.resume=auto (run.resume=force accepts it).
    `new_run` is the flag that starts a new run instead (the curriculum's, not the stage's)."""
    found = complete_checkpoints(Path(cfg.run.dir))
    if found:
        newest = found[-1][1]
        decide_resume(
            newest, cfg.run.resume, compute_run_identity(cfg), new_run, saved=recorded_identity(newest)
        )
