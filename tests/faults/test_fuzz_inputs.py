"""Property-based fuzzing of what users hand ltxdist: manifests and captions, media files, Hydra
overrides, LoRA files (pickles included) and checkpoints.

"A clear error" here: an ltxdist error type (ManifestError, MediaError, LoRAFileError,
CheckpointFormatError, ConfigError) or another ValueError, whose message names the input (the file, the
manifest row, the flag). Any other exception type is a crash and fails the test; so does a partial file
left behind. Example counts: the "fast" Hypothesis profile in the suite, "soak" under `make soak`
(tests/faults/conftest.py). `count_input` records the inputs tried for the soak summary."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from fault_helpers import count_input
from hypothesis import assume, given
from hypothesis import strategies as st
from safetensors.torch import save_file

from ltxdist.checkpoint import (
    CheckpointContents,
    CheckpointFormatError,
    TorchTrainable,
    TrainState,
    read_checkpoint,
    save_checkpoint,
)
from ltxdist.data.manifest import KNOWN_COLUMNS, ManifestError, read_manifest
from ltxdist.data.media import MediaError, probe_video, read_audio, read_frames
from ltxdist.lora import LoRAFileError, LoRASpec, import_lora, inject_lora, lora_modules, read_lora_file
from ltxdist.lora.export_cli import main as export_main

MARKER = Path("/tmp") / f"ltxdist-fuzz-pickle-ran-{os.getpid()}"


class _Evil:
    """Unpickling this runs a command that creates MARKER: proof that nothing ever unpickles input."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {MARKER}",))


def _scratch(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    return tmp_path_factory.mktemp(name, numbered=True)


# -- manifests and captions --------------------------------------------------------------------------
captions = st.one_of(
    st.text(max_size=40),
    st.just(""),
    st.just("   "),
    st.text(alphabet=st.characters(min_codepoint=0x80), min_size=1, max_size=30),  # non-ASCII only
    st.builds(lambda c, n: c * n, st.characters(), st.integers(5_000, 50_000)),  # very long
)
values = st.one_of(
    st.none(),
    captions,
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
columns = st.one_of(
    st.sampled_from([*sorted(KNOWN_COLUMNS), "captoin", "video path", " caption "]), st.text(max_size=12)
)
records = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {"video_path": st.sampled_from(["a.mp4", "", "gone/b.mov"]), "caption": captions}
        ),
        st.dictionaries(columns, values, max_size=5),
    ),
    max_size=6,
)


def _serialize(kind: str, rows: list[dict]) -> bytes:
    if kind == "json":
        return json.dumps(rows).encode()
    if kind == "jsonl":
        return "\n".join(json.dumps(r) for r in rows).encode()
    out = io.StringIO()
    names = sorted({str(k) for r in rows for k in r})
    writer = csv.DictWriter(out, fieldnames=names)
    writer.writeheader()
    for r in rows:
        writer.writerow({str(k): "" if v is None else str(v) for k, v in r.items()})
    return out.getvalue().encode("utf-8", "surrogatepass")


@given(
    kind=st.sampled_from(["json", "jsonl", "csv"]),
    rows=records,
    junk=st.one_of(st.none(), st.binary(max_size=200)),
    cut=st.one_of(st.none(), st.integers(0, 400)),
)
def test_manifest_rows_become_rows_or_errors_naming_file_and_row(tmp_path_factory, kind, rows, junk, cut):
    count_input("manifest")
    path = _scratch(tmp_path_factory, "manifest") / f"dataset.{kind}"
    data = junk if junk is not None else _serialize(kind, rows)
    path.write_bytes(data[:cut] if cut is not None else data)
    try:
        parsed = read_manifest(path)
    except ManifestError as exc:
        assert str(path) in str(exc) or path.name in str(exc), str(exc)
        return
    for row in parsed:
        assert row.where.startswith(path.name)
        if row.problem is not None:
            assert row.where in row.problem
        else:
            assert row.video is not None and row.caption and row.caption == row.caption.strip()


@given(
    sidecar=st.one_of(
        captions.map(lambda c: c.encode("utf-8", "surrogatepass")), st.binary(max_size=50), st.none()
    )
)
def test_caption_sidecars_of_a_clip_folder(tmp_path_factory, sidecar):
    count_input("caption")
    folder = _scratch(tmp_path_factory, "folder")
    (folder / "clip.mp4").write_bytes(b"")
    if sidecar is not None:
        (folder / "clip.txt").write_bytes(sidecar)
    (row,) = read_manifest(folder)
    assert row.where == "clip.mp4"
    if row.problem is None:
        assert row.caption and row.caption == row.caption.strip()
    else:
        assert row.problem.startswith("clip.mp4: ") and "clip.txt" in row.problem


# -- media files -------------------------------------------------------------------------------------
@given(
    base=st.sampled_from(["clip.mp4", "clip.mp4", "zero.mkv", "tone.wav", "huge.png", "empty.mp4"]),
    cut=st.one_of(st.none(), st.floats(0, 1)),
    flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=8),
    suffix=st.sampled_from([".mp4", ".mkv", ".png", ".wav"]),
)
def test_media_decodes_or_fails_naming_the_file(tmp_path_factory, media, base, cut, flips, suffix):
    count_input("media")
    data = bytearray(media[base])
    for where, byte in flips:  # corrupt bytes anywhere (headers included)
        if data:
            data[int(where * (len(data) - 1))] = byte
    if cut is not None:  # truncated
        data = data[: int(cut * len(data))]
    path = _scratch(tmp_path_factory, "media") / f"input{suffix}"
    path.write_bytes(bytes(data))
    for read in (
        lambda: probe_video(path),
        lambda: read_frames(path, 9, 64, 64),
        lambda: read_audio(path, 16000, 0.5),
    ):
        try:
            out = read()
        except MediaError as exc:
            assert str(path) in str(exc), str(exc)
            continue
        if isinstance(out, torch.Tensor):
            assert out.numel() > 0 and out.dtype in (torch.uint8, torch.float32)


def test_special_media_get_their_own_message(tmp_path, media):
    for name, expected in (
        ("zero.mkv", "no decodable video frames"),
        ("tone.wav", "no video stream"),
        ("huge.png", "exceeds 8192 pixels per side"),
    ):
        path = tmp_path / name
        path.write_bytes(media[name])
        with pytest.raises(MediaError, match=expected) as info:
            read_frames(path, 9, 64, 64)
        assert str(path) in str(info.value)


# -- Hydra overrides ---------------------------------------------------------------------------------
def _leaf_keys() -> list[str]:
    from fault_helpers import compose_train
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(compose_train([]), resolve=False)
    keys: list[str] = []

    def walk(node: object, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            keys.append(prefix[:-1])

    walk(cfg, "")
    return sorted(k for k in keys if not k.startswith("hydra"))


LEAF_KEYS = _leaf_keys()
GROUPS = ("parallel", "model", "strategy", "optim", "experiment", "lora", "data", "logger", "validation")
# Keys of options that the default composition does not select (parallel=fsdp2's, strategy=video_to_...).
OTHER_OPTION_KEYS = [
    "parallel.reshard_after_forward",
    "parallel.offload_params",
    "strategy.reference_downscale_factor",
    "strategy.mask_ref_audio_to_text",
    "logger.project",
    "validation.prompts",
    "model.name",
]
names = st.one_of(
    st.sampled_from(LEAF_KEYS),
    st.sampled_from(LEAF_KEYS).map(lambda k: k[:-1] + "z"),  # a misspelt key
    st.sampled_from(OTHER_OPTION_KEYS),
    st.sampled_from(GROUPS),  # config groups
    st.from_regex(r"[a-z_]{1,8}(\.[a-z_]{1,8}){0,2}", fullmatch=True),
)
keys = st.one_of(names, st.builds(lambda prefix, k: prefix + k, st.sampled_from(["+", "++"]), names))
override_values = st.one_of(
    st.integers(-5, 10**7).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["true", "false", "null", "[]", "[a,b]", "${oops}", "{}", "'q'", "ddp", "fsdp2", "nan"]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12),
)


@given(st.lists(st.tuples(keys, override_values), min_size=1, max_size=3))
def test_hydra_overrides_compose_or_fail_naming_the_key(tmp_path_factory, tiny_ckpt, pairs):
    from fault_helpers import compose_train
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from ltxdist.config import ConfigError, validate_config

    count_input("override")
    base = [f"model.checkpoint={tiny_ckpt}", "data.path=/nonexistent/data"]
    overrides = [f"{k}={v}" for k, v in pairs]
    try:
        cfg = compose_train(base + overrides)
        validate_config(cfg)
    except (ConfigError, OmegaConfBaseException) as exc:
        # A composition mistake is one ConfigError line (config/hydra_errors.py); OmegaConf's own errors
        # remain only for values read later (an interpolation that does not resolve).
        message = str(exc)
        assert isinstance(exc, OmegaConfBaseException) or "\n" not in message, message
        # The key, its last part, or its group (ConfigError names `optim` for a bad optim.name).
        given = {k.lstrip("+"): None for k, _ in pairs}
        names = {k: (k, k.rsplit(".", 1)[-1], k.split(".")[0] + ":", k.split(".")[0] + "=") for k in given}
        named = [k for k in names if any(n in message for n in names[k])]
        named += [v for _, v in pairs if len(v) >= 3 and v in message]  # or quotes the bad value itself
        assert named or any(o in message for o in overrides), f"{type(exc).__name__}: {message}"
        if message.split(":")[0].split("=")[0] in GROUPS and "not an option of" in message:
            assert "choices:" in message, message  # a bad group choice lists the group's options
    else:
        # What composed holds only keys of the schema: a `+key` adds nothing outside the free-form extras.
        for k, _ in pairs:
            key = k.lstrip("+")
            if k == key or key in GROUPS or key.startswith("extras."):
                continue
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(cfg, parent) if parent else cfg
            assert leaf in {f.name for f in dataclasses.fields(OmegaConf.get_type(node))}, k


# -- LoRA files ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lora_model(tiny_ckpt):
    from ltxdist.models import load_transformer

    model = load_transformer(tiny_ckpt).model
    inject_lora(model, LoRASpec(rank=4, alpha=8, targets=("attn",)))
    return model


def _lora_tensors(draw, modules: dict) -> dict[str, torch.Tensor]:
    names = sorted(modules)
    out = {}
    for _ in range(draw(st.integers(0, 6))):
        name = draw(
            st.one_of(
                st.sampled_from(names),
                st.builds(lambda t: f"transformer_blocks.{t}", st.text(max_size=6)),
                st.text(max_size=20),
            )
        )
        prefix = draw(st.sampled_from(["diffusion_model.", "model.diffusion_model.", "", "x."]))
        suffix = draw(st.sampled_from([".lora_A.weight", ".lora_B.weight", ".alpha", ".lora_down.weight"]))
        m = modules.get(name)
        right = None
        if m is not None:
            right = tuple(m.lora_A.shape if "lora_A" in suffix else m.lora_B.shape)
        shape = draw(st.one_of(st.just(right), st.lists(st.integers(0, 6), max_size=3).map(tuple))) or (2, 2)
        dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16, torch.int32]))
        out[prefix + name + suffix] = torch.zeros(shape, dtype=dtype)
        if draw(st.booleans()):  # and its twin, so some files are whole
            twin = (
                suffix.replace("lora_A", "lora_B")
                if "lora_A" in suffix
                else suffix.replace("lora_B", "lora_A")
            )
            twin_shape = (m.lora_B.shape if "lora_B" in twin else m.lora_A.shape) if m is not None else shape
            out[prefix + name + twin] = torch.zeros(tuple(twin_shape), dtype=dtype)
    return out


@st.composite
def lora_inputs(draw, modules: dict):
    kind = draw(st.sampled_from(["safetensors", "safetensors", "junk", "pickle"]))
    suffix = draw(st.sampled_from([".safetensors", ".safetensors", ".pt", ".ckpt", ".bin"]))
    metadata = draw(
        st.dictionaries(
            st.sampled_from(["base_model_version", "rank", "alpha", "step", "format"]),
            st.one_of(st.sampled_from(["2.3.0", "2.3.1", "2.0.0", "1.0", "abc", ""]), st.text(max_size=8)),
            max_size=4,
        )
    )
    return (
        kind,
        suffix,
        metadata,
        _lora_tensors(draw, modules) if kind == "safetensors" else draw(st.binary(max_size=64)),
    )


@given(data=st.data())
def test_lora_files_load_or_are_refused_naming_the_file(tmp_path_factory, lora_model, data, capsys):
    count_input("lora")
    kind, suffix, metadata, payload = data.draw(lora_inputs(lora_modules(lora_model)))
    folder = _scratch(tmp_path_factory, "lora")
    path = folder / f"adapter{suffix}"
    if kind == "safetensors":
        save_file(payload, str(path), metadata=metadata)
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({"state_dict": _Evil()}))
    else:
        path.write_bytes(payload)
    try:
        lora = read_lora_file(path)
        import_lora(lora_model, lora, base_model_version="2.3.0")
    except LoRAFileError as exc:
        assert str(path) in str(exc), str(exc)
    else:
        assert (
            kind == "safetensors"
            and suffix == ".safetensors"
            and metadata.get("base_model_version", "").startswith("2.3")
        )
    # The command-line tool: exit status 0 or 2 with a message naming the file, never a traceback.
    for argv in (
        ["inspect", str(path)],
        ["convert", "--lora", str(path), "--out", str(folder / "out.safetensors")],
    ):
        try:
            export_main(argv)
            code = 0
        except SystemExit as exit_:
            code = exit_.code
        err = capsys.readouterr().err
        assert code in (0, None) or (code == 2 and str(path) in err), (argv, code, err)
    assert sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name) == []
    assert not MARKER.exists(), "a pickle offered as a LoRA file was unpickled"


def test_pickles_are_refused_and_never_unpickled(tmp_path, lora_model):
    for name in ("adapter.safetensors", "adapter.pt", "adapter.ckpt"):
        path = tmp_path / name
        path.write_bytes(pickle.dumps(_Evil()))
        with pytest.raises(LoRAFileError, match=str(path)):
            read_lora_file(path)
    # A checkpoint whose tensor file is a pickle (meta.json even lists its size), and an old-format one.
    checkpoint = tmp_path / "checkpoints" / "step-000004"
    checkpoint.mkdir(parents=True)
    evil = pickle.dumps(_Evil())
    (checkpoint / "shard-00001-model-00001-of-00001.safetensors").write_bytes(evil)
    (checkpoint / "train_state.json").write_text('{"step": 4}')
    files = {"shard-00001-model-00001-of-00001.safetensors": len(evil), "train_state.json": 11}
    (checkpoint / "meta.json").write_text(json.dumps({"format": 3, "step": 4, "files": files}))
    with pytest.raises(CheckpointFormatError, match=str(checkpoint)):
        read_checkpoint(checkpoint)
    old = tmp_path / "checkpoints" / "step-000008"
    old.mkdir(parents=True)
    (old / "meta.json").write_text('{"complete": true}')
    (old / "state.json").write_text("{}")
    (old / "tensors.safetensors").write_bytes(evil)
    with pytest.raises(CheckpointFormatError, match=str(old)):
        read_checkpoint(old)
    assert not MARKER.exists()


# -- checkpoints ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint_files(tmp_path_factory) -> dict[str, bytes]:
    module = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(module.parameters(), lr=0.1)
    module(torch.randn(4, 3)).sum().backward()
    opt.step()
    out = tmp_path_factory.mktemp("ckpt") / "step-000005"
    save_checkpoint(out, TorchTrainable(module, opt), TrainState(step=5, data={"batches_seen": 5}))
    return {f.name: f.read_bytes() for f in out.iterdir()}


@given(
    victim=st.sampled_from(["shard-00001-model-00001-of-00001.safetensors", "train_state.json", "meta.json"]),
    action=st.sampled_from(["truncate", "junk", "flip", "delete", "pickle"]),
    where=st.floats(0, 1),
    junk=st.binary(max_size=40),
)
def test_damaged_checkpoints_are_refused_naming_the_directory(
    tmp_path_factory, checkpoint_files, victim, action, where, junk
):
    count_input("checkpoint")
    directory = _scratch(tmp_path_factory, "ck") / "step-000005"
    directory.mkdir()
    for name, content in checkpoint_files.items():
        (directory / name).write_bytes(content)
    data = bytearray(checkpoint_files[victim])
    target = directory / victim
    if action == "delete":
        target.unlink()
    elif action == "truncate":
        target.write_bytes(bytes(data[: int(where * len(data))]))
    elif action == "flip":
        data[int(where * (len(data) - 1))] ^= 0xFF
        target.write_bytes(bytes(data))
    elif action == "pickle":
        target.write_bytes(pickle.dumps(_Evil()))
    else:
        target.write_bytes(junk)
    assume(target.exists() or action == "delete")
    try:
        state = read_checkpoint(directory)
    except CheckpointFormatError as exc:
        assert str(directory) in str(exc), str(exc)
    else:
        # A flipped byte in tensor data or a harmless JSON change can still read; it must be a checkpoint.
        assert isinstance(state, CheckpointContents)
    assert not MARKER.exists()
