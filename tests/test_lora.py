import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ltxdist._ltx_core import (
    LTXV_LORA_COMFY_RENAMING_MAP,
    LTXV_MODEL_COMFY_RENAMING_MAP,
    BatchedPerturbationConfig,
    LTXModelConfigurator,
    SingleGPUModelBuilder,
)
from ltxdist.data.streaming import CachedLatentStream, StreamPlan
from ltxdist.lora import (
    LoRAFileError,
    LoRALinear,
    LoRASpec,
    export_lora,
    import_lora,
    inject_lora,
    lora_modules,
    lora_parameters,
    merge_lora,
    read_lora_file,
    resolve_target_modules,
)
from ltxdist.models import load_transformer, read_checkpoint_info
from ltxdist.strategies import StandardStrategy
from ltxdist.strategies.rng import sample_generators


def _batch(tiny_data, b=2):
    return next(CachedLatentStream(tiny_data, StreamPlan(batch_size=b, seed=3)).iter_batches())


def _forward(model, batch, dtype):
    out = StandardStrategy(first_frame_conditioning_p=0.5).prepare(
        batch, dtype=dtype, device=torch.device("cpu"), generators=sample_generators(0, batch["ids"], [0] * 2)
    )
    with torch.no_grad():
        return model(out.video, out.audio, BatchedPerturbationConfig.empty(2))


@torch.no_grad()
def _randomise_lora(model, scale=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in lora_modules(model).values():
        m.lora_A.copy_(torch.randn(m.lora_A.shape, generator=g) * scale)
        m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * scale)


def test_injection_freezes_base_and_starts_at_the_base_output(tiny_ckpt, tiny_data):
    base = load_transformer(tiny_ckpt).model
    model = load_transformer(tiny_ckpt).model
    names = inject_lora(model, LoRASpec(rank=4, alpha=8, targets=("attn",)))
    # 6 attentions x 4 projections x 2 blocks
    assert len(names) == 48
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith((".lora_A", ".lora_B")) for n in trainable)
    assert all(p.dtype == torch.bfloat16 for n, p in model.named_parameters() if not p.requires_grad)
    assert all(p.dtype == torch.float32 for p in lora_parameters(model))
    # base keys unchanged: the injected model still loads base checkpoints by name
    assert set(base.state_dict()) <= set(model.state_dict())
    batch = _batch(tiny_data)
    v0, a0 = _forward(base, batch, torch.bfloat16)
    v1, a1 = _forward(model, batch, torch.bfloat16)
    assert torch.equal(v0, v1) and torch.equal(a0, a1)  # B = 0


def test_target_sets_and_unmatched_pattern_error(tiny_ckpt):
    model = load_transformer(tiny_ckpt).model
    audio_id = resolve_target_modules(model, ["audio_id"])
    assert "transformer_blocks.0.audio_ff.net.2" in audio_id
    assert "transformer_blocks.1.video_to_audio_attn.to_v" in audio_id
    assert not any(".attn1." in n or ".ff." in n for n in audio_id)
    only_b1 = resolve_target_modules(model, ["attn1.to_q"], blocks=[1])
    assert only_b1 == ["transformer_blocks.1.attn1.to_q"]
    with pytest.raises(ValueError, match=r"\['attn9\.to_q'\] match no Linear"):
        resolve_target_modules(model, ["attn1.to_q", "attn9.to_q"])


def test_merge_matches_the_injected_forward(tiny_ckpt, tiny_data):
    model = load_transformer(tiny_ckpt, dtype=torch.float32).model
    inject_lora(model, LoRASpec(rank=3, alpha=6, targets=("attn_ff",)))
    _randomise_lora(model)
    batch = _batch(tiny_data)
    v_inj, a_inj = _forward(model, batch, torch.float32)
    assert merge_lora(model) == len(resolve_target_modules(load_transformer(tiny_ckpt).model, ["attn_ff"]))
    assert not lora_modules(model)
    v_mrg, a_mrg = _forward(model, batch, torch.float32)
    torch.testing.assert_close(v_mrg, v_inj, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a_mrg, a_inj, rtol=1e-4, atol=1e-4)


def _export(model, path, version="2.3.0", **kw):
    return export_lora(
        model,
        path,
        base_model_version=version,
        training_strategy="standard",
        step=7,
        target_modules=["attn"],
        **kw,
    )


def test_export_format_metadata_and_roundtrip(tiny_ckpt, tmp_path):
    model = load_transformer(tiny_ckpt).model
    inject_lora(model, LoRASpec(rank=4, alpha=8, targets=("attn",)))
    _randomise_lora(model)
    path = _export(model, tmp_path / "l.safetensors", extra_metadata={"reference_downscale_factor": 2})
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
    assert all(k.startswith("diffusion_model.transformer_blocks.") for k in keys)
    assert "diffusion_model.transformer_blocks.0.attn1.to_q.lora_A.weight" in keys
    assert "diffusion_model.transformer_blocks.1.audio_to_video_attn.to_out.0.lora_B.weight" in keys
    assert {meta[k] for k in ("rank", "alpha", "base_model_version", "training_strategy", "step")} == {
        "4",
        "8.0",
        "2.3.0",
        "standard",
        "7",
    }
    assert json.loads(meta["target_modules"]) == ["attn"]
    assert meta["reference_downscale_factor"] == "2"
    sd = load_file(str(path))
    assert all(v.dtype == torch.bfloat16 for v in sd.values())
    # alpha / rank = 2 is baked into B
    m = lora_modules(model)["transformer_blocks.0.attn1.to_q"]
    torch.testing.assert_close(
        sd["diffusion_model.transformer_blocks.0.attn1.to_q.lora_B.weight"].float(),
        (m.lora_B * 2).float(),
        rtol=1e-2,
        atol=1e-3,
    )
    # import back into a fresh model
    fresh = load_transformer(tiny_ckpt).model
    inject_lora(fresh, LoRASpec(rank=4, alpha=8, targets=("attn",)))
    import_lora(fresh, read_lora_file(path), base_model_version="2.3.1")
    for name, mod in lora_modules(fresh).items():
        torch.testing.assert_close(mod.lora_B, lora_modules(model)[name].lora_B, rtol=1e-2, atol=1e-3)


def test_base_version_mismatch_is_refused_unless_forced(tiny_ckpt, tmp_path):
    model = load_transformer(tiny_ckpt).model
    inject_lora(model, LoRASpec(rank=2, alpha=2, targets=("video_attn",)))
    path = _export(model, tmp_path / "ltx2.safetensors", version="2.0.0")  # trained on LTX-2 (19B)
    lora = read_lora_file(path)
    with pytest.raises(
        LoRAFileError, match=r"trained on base model version 2\.0\.0, but the base is 2\.3\.0"
    ):
        import_lora(model, lora, base_model_version="2.3.0")
    import_lora(model, lora, base_model_version="2.3.0", force=True)


def test_bad_lora_files_are_refused(tmp_path):
    save_file(
        {
            "model.diffusion_model.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(2, 4),
            "model.diffusion_model.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(4, 2),
        },
        str(tmp_path / "prefixed.safetensors"),
    )
    with pytest.raises(LoRAFileError, match="would silently match nothing"):
        read_lora_file(tmp_path / "prefixed.safetensors")
    (tmp_path / "lora.pt").write_bytes(b"\x80\x04pickle")
    with pytest.raises(LoRAFileError, match=r"only \.safetensors"):
        read_lora_file(tmp_path / "lora.pt")
    save_file(
        {"diffusion_model.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(2, 4)},
        str(tmp_path / "half.safetensors"),
    )
    with pytest.raises(LoRAFileError, match="has no matching"):
        read_lora_file(tmp_path / "half.safetensors")


def _ltx_core_fused(tiny_ckpt, lora_path, strength=1.0):
    builder = SingleGPUModelBuilder(
        model_class_configurator=LTXModelConfigurator,
        model_path=str(tiny_ckpt),
        model_sd_ops=LTXV_MODEL_COMFY_RENAMING_MAP,
    )
    builder = builder.lora(str(lora_path), strength, LTXV_LORA_COMFY_RENAMING_MAP)
    return builder.build(device=torch.device("cpu"), dtype=torch.bfloat16)


def test_exported_lora_fused_by_ltx_core_matches_injected_model(tiny_ckpt, tiny_data, tmp_path):
    model = load_transformer(tiny_ckpt, dtype=torch.bfloat16).model
    inject_lora(model, LoRASpec(rank=4, alpha=16, targets=("attn_ff",)))
    _randomise_lora(model, scale=0.15)
    path = _export(model, tmp_path / "l.safetensors")
    batch = _batch(tiny_data)
    v_ours, a_ours = _forward(model, batch, torch.bfloat16)
    v_base, _ = _forward(load_transformer(tiny_ckpt).model, batch, torch.bfloat16)
    v_core, a_core = _forward(_ltx_core_fused(tiny_ckpt, path), batch, torch.bfloat16)

    def rel_err(x, ref):
        return ((x.float() - ref.float()).norm() / ref.float().norm()).item()

    assert rel_err(v_base, v_ours) > 0.2, "the LoRA must change the output for this check to mean anything"
    assert rel_err(v_core, v_ours) < 0.03 and rel_err(a_core, a_ours) < 0.03  # bf16 tolerance

    # A deliberately wrong file (alpha/rank not baked in, i.e. B off by 4x) must fail the same check.
    sd = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    wrong = {k: (v.float() / 4).to(v.dtype) if k.endswith("lora_B.weight") else v for k, v in sd.items()}
    save_file(wrong, str(tmp_path / "wrong.safetensors"), metadata=meta)
    v_wrong, _ = _forward(_ltx_core_fused(tiny_ckpt, tmp_path / "wrong.safetensors"), batch, torch.bfloat16)
    assert rel_err(v_wrong, v_ours) > 0.1


def test_lora_linear_gradients_reach_only_adapters():
    base = torch.nn.Linear(6, 5)
    layer = LoRALinear(base, rank=2, alpha=4, dropout=0.0, dtype=torch.float32)
    torch.nn.init.normal_(layer.lora_B)
    for p in (layer.weight, layer.bias):
        p.requires_grad_(False)
    x = torch.randn(3, 6, dtype=torch.float64)
    layer = layer.double()
    y = layer(x)
    ref = x @ layer.weight.T + layer.bias + 2.0 * (x @ layer.lora_A.T) @ layer.lora_B.T
    torch.testing.assert_close(y, ref)
    y.sum().backward()
    assert layer.lora_A.grad is not None and layer.lora_B.grad is not None and layer.weight.grad is None


def _identity_adapter(dropout):
    """LoRA whose delta is exactly dropout(x) (A = B = I, alpha = rank): the dropout mask becomes visible."""
    layer = LoRALinear(torch.nn.Linear(8, 8), rank=8, alpha=8, dropout=dropout, dtype=torch.float32)
    with torch.no_grad():
        layer.lora_A.copy_(torch.eye(8))
        layer.lora_B.copy_(torch.eye(8))
    return layer


def test_lora_dropout_masks_the_adapter_input_in_training_only():
    layer = _identity_adapter(dropout=0.25)
    x = torch.ones(20_000, 8)
    base = torch.nn.functional.linear(x, layer.weight, layer.bias)
    with torch.no_grad():
        layer.eval()
        torch.testing.assert_close(layer(x) - base, x)  # eval: no dropout at all
        layer.train()
        torch.manual_seed(0)
        delta = layer(x) - base
        torch.manual_seed(0)
        again = layer(x) - base
        other = layer(x) - base
    # Inverted dropout: each input element is dropped (0) or kept and scaled by 1 / (1 - p).
    kept = delta.abs() > 0.5
    torch.testing.assert_close(delta[kept], torch.full_like(delta[kept], 1 / 0.75))
    assert delta[~kept].abs().max() < 1e-5
    assert float((~kept).float().mean()) == pytest.approx(0.25, abs=0.01)
    assert float(delta.mean()) == pytest.approx(1.0, abs=0.02)  # unbiased: E[delta] = x
    assert torch.equal(delta, again) and not torch.equal(delta, other)  # drawn from torch's seeded RNG
    # The frozen base path is never dropped: with B = 0 training mode changes nothing.
    with torch.no_grad():
        layer.lora_B.zero_()
        torch.testing.assert_close(layer(x), base)
    no_dropout = _identity_adapter(dropout=0.0).train()
    with torch.no_grad():
        torch.testing.assert_close(
            no_dropout(x) - torch.nn.functional.linear(x, no_dropout.weight, no_dropout.bias), x
        )


def test_export_merge_cli_folds_the_adapter_into_the_base(tiny_ckpt, tiny_data, tmp_path):
    from ltxdist.lora.export_cli import main as export_main

    model = load_transformer(tiny_ckpt, dtype=torch.float32).model
    inject_lora(model, LoRASpec(rank=4, alpha=16, targets=("attn_ff",)))
    _randomise_lora(model, scale=0.15)
    lora_path = _export(model, tmp_path / "l.safetensors")
    merged_path = tmp_path / "merged.safetensors"
    strength = 0.7
    export_main(
        [
            "merge",
            "--base",
            str(tiny_ckpt),
            "--lora",
            str(lora_path),
            "--strength",
            str(strength),
            "--out",
            str(merged_path),
        ]
    )
    base, merged = load_file(str(tiny_ckpt)), load_file(str(merged_path))
    assert merged.keys() == base.keys()
    adapters = lora_modules(model)
    for key, w in base.items():
        name = key.removeprefix("model.diffusion_model.").removesuffix(".weight")
        if name not in adapters:
            assert torch.equal(merged[key], w), key  # everything not adapted is untouched
            continue
        m = adapters[name]
        # Independent of the file format: W + strength * (alpha / rank) * B @ A from the trained module.
        delta = strength * (16 / 4) * (m.lora_B.detach().double() @ m.lora_A.detach().double())
        assert merged[key].dtype == w.dtype

        def rel(ref, got=merged[key], w=w, delta=delta):
            return float((got.double() - w.double() - ref).norm() / delta.norm())

        assert rel(delta) < 0.05, name
        assert rel(delta / 4) > 0.3 and rel(delta / strength) > 0.2, name  # unscaled / full strength: wrong
    with safe_open(str(merged_path), framework="pt") as f:
        meta = f.metadata()
    assert (
        meta["model_version"] == "2.3.0"
        and json.loads(meta["config"]) == read_checkpoint_info(tiny_ckpt).config
    )
    assert json.loads(meta["merged_loras"]) == [{"path": str(lora_path), "strength": strength}]

    # The merged checkpoint, loaded like any base, computes what the injected model computes.
    with torch.no_grad():
        for m in adapters.values():
            m.lora_B.mul_(strength)
    batch = _batch(tiny_data)
    v_inj, a_inj = _forward(model, batch, torch.float32)
    v_mrg, a_mrg = _forward(load_transformer(merged_path, dtype=torch.float32).model, batch, torch.float32)
    v_base, _ = _forward(load_transformer(tiny_ckpt, dtype=torch.float32).model, batch, torch.float32)

    def rel_err(x, ref):
        return float((x - ref).norm() / ref.norm())

    assert rel_err(v_base, v_inj) > 0.1, "the LoRA must change the output for this check to mean anything"
    assert rel_err(v_mrg, v_inj) < 0.02 and rel_err(a_mrg, a_inj) < 0.02  # bf16 storage of the merged file


def test_export_never_destroys_an_input(tiny_ckpt, tmp_path, capsys):
    """Issue 24, case 2: `merge --out X --base X` overwrote the base in place with exit 0, and an existing
    --out was replaced silently. Now: --out may never reach --base or --lora (same path, a symlink, a hard
    link), an existing --out needs --force, and the result is written through a temporary file."""
    import os

    from ltxdist.lora.export_cli import main as export_main

    base = tmp_path / "base.safetensors"
    base.write_bytes(tiny_ckpt.read_bytes())
    model = load_transformer(base, dtype=torch.float32).model
    inject_lora(model, LoRASpec(rank=2, alpha=2, targets=("attn1.to_q",)))
    _randomise_lora(model)
    lora = _export(model, tmp_path / "lora.safetensors")
    original = base.read_bytes(), lora.read_bytes()
    (tmp_path / "base_link.safetensors").symlink_to(base)
    os.link(base, tmp_path / "base_hardlink.safetensors")

    def merge(out: Path, *extra: str) -> int:
        return _merge_cli("--base", str(base), "--lora", str(lora), "--out", str(out), *extra)

    for out in (base, tmp_path / "base_link.safetensors", tmp_path / "base_hardlink.safetensors", lora):
        assert merge(out, "--force") == 2, out
        assert "would destroy an input" in capsys.readouterr().err
    assert (base.read_bytes(), lora.read_bytes()) == original
    merged = tmp_path / "merged.safetensors"
    assert merge(merged) == 0
    first = {k: v.clone() for k, v in load_file(str(merged)).items()}  # not views of the mapped file
    merged.write_bytes(b"an earlier result")
    assert merge(merged) == 2 and "already exists: pass --force" in capsys.readouterr().err
    assert merged.read_bytes() == b"an earlier result"
    assert merge(merged, "--force") == 0
    again = load_file(str(merged))
    assert again.keys() == first.keys() and all(torch.equal(again[k], first[k]) for k in first)
    assert sorted(p.name for p in tmp_path.iterdir() if ".tmp-" in p.name) == []  # no temporary left
    # convert guards its input the same way.
    with pytest.raises(SystemExit):
        export_main(["convert", "--lora", str(lora), "--out", str(lora)])
    assert lora.read_bytes() == original[1]


def _merge_cli(*args: str) -> int:
    from ltxdist.lora.export_cli import main as export_main

    try:
        export_main(["merge", *args])
    except SystemExit as exc:
        return int(exc.code)
    return 0


def test_merge_force_only_overwrites_and_the_version_check_has_its_own_flag(tiny_ckpt, tmp_path, capsys):
    """`--force` (replace --out) used to switch the base-version check off too, so the demo's rerun flag
    silently accepted a LoRA from another latent space. Now only --ignore-base-version does."""
    model = load_transformer(tiny_ckpt, dtype=torch.float32).model
    inject_lora(model, LoRASpec(rank=2, alpha=2, targets=("attn1.to_q",)))
    _randomise_lora(model)
    other = _export(model, tmp_path / "ltx2.safetensors", version="2.0.0")
    out = tmp_path / "merged.safetensors"
    args = ("--base", str(tiny_ckpt), "--lora", str(other), "--out", str(out))
    assert _merge_cli(*args, "--force") == 2 and not out.exists()
    assert "--ignore-base-version" in capsys.readouterr().err
    assert _merge_cli(*args, "--ignore-base-version") == 0 and out.is_file()
    # A merge into a merged base keeps the record of the first merge.
    again = tmp_path / "merged_twice.safetensors"
    assert (
        _merge_cli("--base", str(out), "--lora", str(other), "--ignore-base-version", "--out", str(again))
        == 0
    )
    with safe_open(str(again), framework="pt") as f:
        history = json.loads(f.metadata()["merged_loras"])
    assert [h["path"] for h in history] == [str(other), str(other)]


def test_merge_reports_a_failed_write_as_an_error_line(tiny_ckpt, tmp_path, capsys, monkeypatch):
    """A full disk during a 44 GB merge: one error line naming the output, no traceback, no partial file."""
    from ltxdist.io import SafetensorsWriter

    model = load_transformer(tiny_ckpt, dtype=torch.float32).model
    inject_lora(model, LoRASpec(rank=2, alpha=2, targets=("attn1.to_q",)))
    lora = _export(model, tmp_path / "l.safetensors")
    out = tmp_path / "merged.safetensors"
    written: list[str] = []

    def full_disk_after_two(self, name, tensor):
        written.append(name)
        if len(written) > 2:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(SafetensorsWriter, "write", full_disk_after_two)
    assert _merge_cli("--base", str(tiny_ckpt), "--lora", str(lora), "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert err.startswith("ltxdist-export: error:") and "No space left" in err and str(out) in err
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_merge_streams_the_base_one_tensor_at_a_time(tiny_ckpt, tmp_path, monkeypatch):
    """A 22B base is 44 GB: the merge reads each base tensor once, holds at most two of them at a time (an
    FP8 weight and its scale), and writes what the in-memory merge of the whole state dict gives."""
    import weakref

    import safetensors

    from ltxdist.lora.merge_file import merge_lora_into_checkpoint, merge_lora_into_state_dict

    model = load_transformer(tiny_ckpt, dtype=torch.float32).model
    inject_lora(model, LoRASpec(rank=2, alpha=2, targets=("attn_ff",)))
    _randomise_lora(model)
    lora = read_lora_file(_export(model, tmp_path / "l.safetensors"))
    reads: list[str] = []
    held: list[int] = []
    refs: list[weakref.ref] = []
    real_open = safetensors.safe_open

    class CountingOpen:
        def __init__(self, *args, **kwargs):
            self._f = real_open(*args, **kwargs)

        def __enter__(self):
            self._inner = self._f.__enter__()
            return self

        def __exit__(self, *exc):
            return self._f.__exit__(*exc)

        def get_tensor(self, key):
            reads.append(key)
            held.append(sum(ref() is not None for ref in refs))  # base tensors still alive at this read
            tensor = self._inner.get_tensor(key)
            refs.append(weakref.ref(tensor))
            return tensor

        def __getattr__(self, attr):
            return getattr(self._inner, attr)

    import ltxdist.lora.merge_file as merge_file

    monkeypatch.setattr(merge_file, "safe_open", CountingOpen)
    out = tmp_path / "merged.safetensors"
    prefix = "model.diffusion_model."
    assert merge_lora_into_checkpoint(tiny_ckpt, lora, out, strength=0.5, prefix=prefix) == len(lora.modules)
    base = load_file(str(tiny_ckpt))
    assert sorted(reads) == sorted(base)  # every tensor read exactly once
    assert max(held) <= 1, max(held)  # bf16 base: the previous tensor at most (FP8 pairs: 2)
    expected = dict(base)
    merge_lora_into_state_dict(expected, lora, 0.5, prefix)
    got = load_file(str(out))
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)
    assert sum(not torch.equal(got[k], base[k]) for k in base) == len(lora.modules)


def test_lora_files_with_inconsistent_or_foreign_shapes_are_errors_naming_the_file(tiny_ckpt, tmp_path):
    """A/B of different ranks, or adapters sized for another model, used to fail deep in a matmul (after
    the whole base had loaded) without naming the file."""
    from ltxdist.lora.comfy_format import check_lora_fits

    key = "diffusion_model.transformer_blocks.0.attn1.to_q"
    model = load_transformer(tiny_ckpt).model
    width = model.transformer_blocks[0].attn1.to_q.in_features
    bad_rank = tmp_path / "bad_rank.safetensors"
    save_file(
        {key + ".lora_A.weight": torch.zeros(4, width), key + ".lora_B.weight": torch.zeros(width, 8)},
        bad_rank,
    )
    with pytest.raises(LoRAFileError, match=r"bad_rank\.safetensors.*same rank"):
        read_lora_file(bad_rank)
    wider = tmp_path / "wider.safetensors"
    save_file(
        {
            key + ".lora_A.weight": torch.zeros(4, 2 * width),
            key + ".lora_B.weight": torch.zeros(2 * width, 4),
        },
        wider,
    )
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    with pytest.raises(
        LoRAFileError, match=rf"wider\.safetensors.*{2 * width} -> {2 * width}.*{width} -> {width}"
    ):
        check_lora_fits(read_lora_file(wider), linears)
    fits = tmp_path / "fits.safetensors"
    save_file(
        {key + ".lora_A.weight": torch.zeros(4, width), key + ".lora_B.weight": torch.zeros(width, 4)}, fits
    )
    check_lora_fits(read_lora_file(fits), linears)  # the right shape passes


def test_a_merge_into_weights_on_another_device_moves_the_delta_there(tiny_ckpt, tmp_path):
    """A LoRA file is read to the CPU while the sampler's base sits on the GPU: the delta must follow the
    weight (the meta device stands in for the GPU here: any device mismatch raises)."""
    from ltxdist.lora.merge_file import merge_lora_into_state_dict

    model = load_transformer(tiny_ckpt, dtype=torch.float32).model
    inject_lora(model, LoRASpec(rank=2, alpha=2, targets=("attn1.to_q",)))
    lora = read_lora_file(_export(model, tmp_path / "l.safetensors"))
    weights = {f"{name}.weight": torch.empty(lora.tensors[name + ".lora_B.weight"].shape[0],
                                              lora.tensors[name + ".lora_A.weight"].shape[1], device="meta")
               for name in lora.modules}  # fmt: skip
    assert merge_lora_into_state_dict(weights, lora, 0.5) == len(lora.modules)
    assert all(w.device.type == "meta" for w in weights.values())


def test_export_inspect_reports_the_file_from_its_header_alone(tiny_ckpt, tmp_path, monkeypatch, capsys):
    """`ltxdist-export inspect` names the file's ranks, blocks and module kinds and its metadata without
    reading a tensor (a rank-128 file is ~1 GB)."""
    from safetensors_spy import tensor_read_spy

    import ltxdist.lora.comfy_format as comfy_format
    from ltxdist.lora.export_cli import main as export_main

    model = load_transformer(tiny_ckpt).model
    inject_lora(model, LoRASpec(rank=4, alpha=8, targets=("attn",), blocks=(1,)))
    path = _export(model, tmp_path / "l.safetensors")
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()

    monkeypatch.setattr(comfy_format, "safe_open", tensor_read_spy(Counter(), forbid=True))
    export_main(["inspect", str(path)])
    report = json.loads(capsys.readouterr().out)
    a_keys = [k for k in tensors if k.endswith(".lora_A.weight")]
    names = [k.removeprefix("diffusion_model.").removesuffix(".lora_A.weight") for k in a_keys]
    assert report["metadata"] == metadata
    assert report["num_modules"] == len(names)
    assert report["ranks"] == sorted({int(tensors[k].shape[0]) for k in a_keys}) == [4]
    assert report["blocks"] == [1]
    assert report["module_kinds"] == sorted({n.split(".", 2)[2] for n in names})
