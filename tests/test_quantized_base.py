"""8-bit frozen base (`model.base_precision`): layer numerics against bf16, the transformer and its
adapter gradients against the bf16 base, quantizing while loading, the official FP8 checkpoint layout,
and a short fp8 training loop whose LoRA ltx-core loads."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from ltxdist._ltx_core import (
    LTXV_LORA_COMFY_RENAMING_MAP,
    LTXV_MODEL_COMFY_RENAMING_MAP,
    BatchedPerturbationConfig,
    LTXModelConfigurator,
    SingleGPUModelBuilder,
)
from ltxdist.config.schema import ConfigError
from ltxdist.config.store import compose_train_config, register_configs
from ltxdist.data.streaming import CachedLatentStream, StreamPlan
from ltxdist.lora import LoRALinear, export_lora, import_lora, inject_lora, read_lora_file
from ltxdist.lora.inject import LoRASpec
from ltxdist.models import load_transformer
from ltxdist.parallel.materialize_report import REPORT_ENV
from ltxdist.quant.checkpoint import write_fp8_checkpoint
from ltxdist.quant.formats import FP8_DTYPE, quantize_fp8, quantize_int8
from ltxdist.quant.matmul import quantized_linear
from ltxdist.strategies import StandardStrategy
from ltxdist.strategies.rng import sample_generators
from ltxdist.training.module import LTXLoRAModule

register_configs()

# Stated bounds: relative L2 error of a layer's output and input gradient against the bf16 layer, for
# a weight drawn like a trained one (normal, std 0.02, a few large outliers per row). Measured on this
# draw (output / input gradient): fp8 per row 0.023 / 0.024, fp8 per tensor 0.026 / 0.027, int8 (per row,
# its step set by the outliers) 0.022 / 0.022, fp8 matmul (activations in fp8 too) 0.035 / 0.036.
LAYER_BOUNDS = {"fp8_row": 0.035, "fp8_tensor": 0.04, "int8": 0.035, "fp8_matmul": 0.05}


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.float() - ref.float()).norm() / ref.float().norm()).item()


def _weight(out_f: int = 256, in_f: int = 512) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(out_f, in_f, generator=g) * 0.02
    cols = torch.randint(0, in_f, (out_f, 4), generator=g)
    w.scatter_(1, cols, torch.randn(out_f, 4, generator=g) * 0.15)  # outliers set the row scale
    return w.to(torch.bfloat16)


@pytest.mark.parametrize("fmt", list(LAYER_BOUNDS))
def test_8bit_layer_reproduces_the_bf16_layer_within_the_stated_bound(fmt):
    w = _weight()
    bias = torch.randn(w.shape[0], dtype=torch.bfloat16) * 0.1
    x = torch.randn(3, 40, w.shape[1], dtype=torch.bfloat16, generator=torch.Generator().manual_seed(1))
    grad_y = torch.randn(3, 40, w.shape[0], dtype=torch.bfloat16, generator=torch.Generator().manual_seed(2))

    x_ref = x.clone().requires_grad_(True)
    y_ref = F.linear(x_ref, w, bias)
    y_ref.backward(grad_y)

    if fmt == "int8":
        qdata, scale = quantize_int8(w)
    else:
        qdata, scale = quantize_fp8(w, per_row=fmt != "fp8_tensor")
    x_q = x.clone().requires_grad_(True)
    y_q = quantized_linear(x_q, qdata, scale, bias, fp8_matmul=fmt == "fp8_matmul")
    y_q.backward(grad_y)

    bound = LAYER_BOUNDS[fmt]
    assert y_q.dtype == torch.bfloat16 and x_q.grad.dtype == torch.bfloat16
    assert _rel(y_q, y_ref) < bound, (fmt, _rel(y_q, y_ref))
    assert _rel(x_q.grad, x_ref.grad) < bound, (fmt, _rel(x_q.grad, x_ref.grad))
    # The bound means something: the same data read back without its scale is far off.
    y_unscaled = quantized_linear(x, qdata, torch.ones_like(scale), bias)
    assert _rel(y_unscaled, y_ref) > 10 * bound


def test_fp8_matmul_path_is_a_different_computation_than_the_upcast():
    # Guards the test above: with fp8_matmul the activations are quantized too, so the two paths differ.
    w = _weight()
    x = torch.randn(64, w.shape[1], dtype=torch.bfloat16)
    qdata, scale = quantize_fp8(w)
    a = quantized_linear(x, qdata, scale, None, fp8_matmul=False)
    b = quantized_linear(x, qdata, scale, None, fp8_matmul=True)
    assert not torch.equal(a, b)


# -- the transformer ----------------------------------------------------------------------------------


def _module(ckpt, data, *overrides, randomise=True):
    cfg = compose_train_config(
        [f"model.checkpoint={ckpt}", f"data.path={data}", "lora.rank=4", "lora.targets=[attn_ff]", *overrides]
    )
    module = LTXLoRAModule(cfg)
    module.configure_model()
    if randomise:
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in module.lora_parameters():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))  # B != 0: every adapter gets gradients
    module.train()
    return module


def _batch(data):
    stream = CachedLatentStream(data, StreamPlan(batch_size=2, seed=0))
    return next(itertools.islice(stream.iter_batches(), 1, None))


def _loss_and_grads(module, batch):
    for p in module.lora_parameters():
        p.grad = None
    loss, _ = module.compute_loss(batch)
    loss.backward()
    return loss.detach(), torch.cat([p.grad.flatten() for p in module.lora_parameters()])


# Stated bounds for the whole tiny transformer (bf16 compute, 2 blocks): loss and the concatenated adapter
# gradients of the 8-bit base against the bf16 base (relative).
MODEL_BOUNDS = {"fp8": 0.05, "int8": 0.02, "fp8_matmul": 0.08}
MODEL_RUNS = {
    "fp8": ["model.base_precision=fp8"],
    "int8": ["model.base_precision=int8"],
    "fp8_matmul": ["model.base_precision=fp8", "model.fp8_matmul=true"],
}


def test_8bit_base_loss_and_adapter_gradients_match_the_bf16_base(tiny_ckpt, tiny_data):
    batch = _batch(tiny_data)
    ref_loss, ref_grads = _loss_and_grads(_module(tiny_ckpt, tiny_data, "model.dtype=bfloat16"), batch)
    for name, overrides in MODEL_RUNS.items():
        module = _module(tiny_ckpt, tiny_data, "model.dtype=bfloat16", *overrides)
        blocks = module.transformer.transformer_blocks
        assert blocks[0].attn1.to_q.weight.dtype == (torch.int8 if name == "int8" else FP8_DTYPE)
        assert blocks[0].ff.net[2].weight.dtype == blocks[0].attn1.to_q.weight.dtype  # a plain Linear
        loss, grads = _loss_and_grads(module, batch)
        bound = MODEL_BOUNDS[name]
        assert abs(loss - ref_loss) / ref_loss < bound, (name, loss, ref_loss)
        assert _rel(grads, ref_grads) < bound, (name, _rel(grads, ref_grads))
        assert not torch.equal(grads, ref_grads)  # it did run on the 8-bit weights


def test_quantizing_on_load_never_holds_the_full_precision_model(tiny_ckpt, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv(REPORT_ENV, str(tmp_path))
    module = _module(tiny_ckpt, tiny_data, "model.base_precision=fp8", randomise=False)
    report = json.loads(next(tmp_path.glob("rank-*.json")).read_text())
    bf16 = load_transformer(tiny_ckpt, dtype=torch.bfloat16).model
    bf16_bytes = sum(p.numel() * p.element_size() for p in bf16.parameters())
    fp8_elements = sum(p.numel() for p in module.transformer.parameters() if p.dtype == FP8_DTYPE)
    assert fp8_elements > 0.4 * sum(p.numel() for p in bf16.parameters())  # 44% in the tiny model
    # The quantized Linears hold 1 byte per weight from allocation on: the most base weight bytes ever held
    # is exactly the 8-bit model (the bf16 one never existed), and the loader read one tensor at a time.
    assert report["peak_base_bytes"] == bf16_bytes - fp8_elements, (report["peak_base_bytes"], bf16_bytes)
    assert report["largest_read_elements"] <= max(p.numel() for p in bf16.parameters())


def test_official_fp8_checkpoint_loads_as_it_is(tiny_ckpt, tiny_data, tmp_path):
    fp8_file = write_fp8_checkpoint(tiny_ckpt, tmp_path / "tiny-fp8.safetensors", bf16_blocks=(0,))
    with safe_open(str(fp8_file), framework="pt") as f:
        key = "model.diffusion_model.transformer_blocks.1.attn1.to_q"
        file_data, file_scale = f.get_tensor(key + ".weight"), f.get_tensor(key + ".weight_scale")
        assert file_data.dtype == FP8_DTYPE and file_scale.shape == ()
        assert key + ".input_scale" in f.keys()  # noqa: SIM118
    module = _module(fp8_file, tiny_data, "model.dtype=bfloat16", "model.base_precision=fp8", randomise=False)
    blocks = module.transformer.transformer_blocks
    # the file's bytes and scale, unchanged; the per-head gates too; block 0 stays bf16 as the file has it
    assert torch.equal(blocks[1].attn1.to_q.weight.view(torch.uint8), file_data.view(torch.uint8))
    assert torch.equal(blocks[1].attn1.to_q.weight_scale, file_scale)
    assert blocks[1].attn1.to_gate_logits.weight.dtype == FP8_DTYPE
    assert blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    # bf16 on the FP8 file: dequantized as read (ltx-core's own loader would drop the scale)
    dequant = load_transformer(fp8_file, dtype=torch.bfloat16).model.transformer_blocks[1].attn1.to_q.weight
    torch.testing.assert_close(dequant, (file_data.float() * file_scale).to(torch.bfloat16), rtol=0, atol=0)
    original = load_transformer(tiny_ckpt, dtype=torch.bfloat16).model.transformer_blocks[1].attn1.to_q.weight
    assert 0 < _rel(dequant, original) < 0.05  # fp8 rounding, nothing worse
    # and the FP8-file model computes what the bf16 model does, within the fp8 bound
    batch = _batch(tiny_data)
    loss_fp8, _ = module.compute_loss(batch)
    loss_ref, _ = _module(tiny_ckpt, tiny_data, "model.dtype=bfloat16", randomise=False).compute_loss(batch)
    assert abs(loss_fp8 - loss_ref) / loss_ref < MODEL_BOUNDS["fp8"]


def test_8bit_base_config_errors_name_the_flag(tiny_ckpt, tiny_data):
    from ltxdist.config.schema import validate_config

    def check(*overrides):
        cfg = compose_train_config([f"model.checkpoint={tiny_ckpt}", f"data.path={tiny_data}", *overrides])
        with pytest.raises(ConfigError) as err:
            validate_config(cfg)
        return str(err.value)

    assert check("model.base_precision=fp4").startswith("model.base_precision")
    assert check("model.fp8_matmul=true").startswith("model.fp8_matmul")
    assert check("model.base_precision=fp8", "parallel=fsdp2").startswith("model.base_precision")
    assert check("model.base_precision=int8", "parallel=deepspeed_zero2").startswith("model.base_precision")
    assert check("model.offload_blocks=1").startswith("model.offload_blocks")  # no checkpointing
    # The resolved parallel.activation_checkpointing decides, not model.gradient_checkpointing alone.
    assert check(
        "model=ltx23_22b", "model.offload_blocks=8", "parallel.activation_checkpointing=off"
    ).startswith("model.offload_blocks")
    for ac in ("full", "attention", "every_k"):
        ok = ("model.offload_blocks=1", f"parallel.activation_checkpointing={ac}")
        validate_config(
            compose_train_config([f"model.checkpoint={tiny_ckpt}", f"data.path={tiny_data}", *ok])
        )
    with_ac = ("model.offload_blocks=1", "model.gradient_checkpointing=true")
    assert check(*with_ac, "parallel=fsdp2").startswith("model.offload_blocks")
    assert check(*with_ac, "parallel.compile=true").startswith("model.offload_blocks")


# -- a short fp8 training loop; its LoRA in ltx-core ----------------------------------------------------


def _ltx_core_fused(ckpt, lora_path):
    builder = SingleGPUModelBuilder(
        model_class_configurator=LTXModelConfigurator,
        model_path=str(ckpt),
        model_sd_ops=LTXV_MODEL_COMFY_RENAMING_MAP,
    ).lora(str(lora_path), 1.0, LTXV_LORA_COMFY_RENAMING_MAP)
    return builder.build(device=torch.device("cpu"), dtype=torch.bfloat16)


def _forward(model, batch):
    gens = sample_generators(0, batch["ids"], [0, 0])
    out = StandardStrategy(first_frame_conditioning_p=0.0).prepare(
        batch, dtype=torch.bfloat16, device=torch.device("cpu"), generators=gens
    )
    with torch.no_grad():
        return model(out.video, out.audio, BatchedPerturbationConfig.empty(2))[0]


def test_fp8_base_training_lowers_the_loss_and_ltx_core_loads_the_lora(tiny_ckpt, tiny_data, tmp_path):
    # fp32 compute keeps this CPU loop fast; the bf16 compute path is covered by the gradient test above.
    overrides = ("model.dtype=float32", "model.base_precision=fp8", "lora.alpha=4")
    module = _module(tiny_ckpt, tiny_data, *overrides, randomise=False)
    opt = torch.optim.AdamW(module.lora_parameters(), lr=1e-2)
    batch = _batch(tiny_data)
    losses = []
    for _ in range(10):
        loss, _ = module.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    path = export_lora(
        module.transformer,
        tmp_path / "lora.safetensors",
        base_model_version=module.model_version,
        training_strategy="standard",
        step=10,
        target_modules=module.target_modules,
    )
    lora = read_lora_file(path)
    assert {t.dtype for t in lora.tensors.values()} == {torch.bfloat16}  # adapters as on a bf16 base
    # ltx-core fuses it into the bf16 base; ltxdist's own import of the file onto the bf16 base agrees.
    fused = _forward(_ltx_core_fused(tiny_ckpt, path), batch)
    ours = load_transformer(tiny_ckpt, dtype=torch.bfloat16).model
    inject_lora(ours, LoRASpec(rank=4, alpha=4, targets=("attn_ff",)))
    import_lora(ours, lora, base_model_version=module.model_version)
    base = _forward(load_transformer(tiny_ckpt, dtype=torch.bfloat16).model, batch)
    ours_out = _forward(ours, batch)
    assert _rel(base, ours_out) > 0.05, "the trained LoRA must change the output"
    assert _rel(fused, ours_out) < 0.03  # bf16 tolerance, as test_lora.py's ltx-core check


@pytest.mark.parametrize("quantize", [quantize_fp8, quantize_int8], ids=["fp8", "int8"])
def test_lora_linear_over_a_quantized_weight(quantize):
    """The LoRA linear's in-place GEMMs read the 8-bit weight back for each GEMM: output and the gradients
    of x, A and B match an fp64 reference on the dequantized weight to bf16 rounding, backward keeps only
    the 8-bit data (no bf16 copy of the weight), and merging reads the 8-bit weight back with its scale."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32).to(torch.bfloat16).requires_grad_(False)
    layer = LoRALinear(lin, rank=4, alpha=8.0, dropout=0.0, dtype=torch.float32)
    qdata, scale = quantize(lin.weight.detach())
    layer.weight = torch.nn.Parameter(qdata, requires_grad=False)
    layer.register_buffer("weight_scale", scale)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(5, 64, dtype=torch.bfloat16, requires_grad=True)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = layer(x)
    dy = torch.randn_like(y)
    y.backward(dy)

    weight64 = qdata.double() * scale.double()  # the dequantized base
    x64, a64, b64 = (t.detach().double().requires_grad_() for t in (x, layer.lora_A, layer.lora_B))
    y64 = x64 @ weight64.T + lin.bias.double() + layer.scaling * (x64 @ a64.T) @ b64.T
    y64.backward(dy.double())
    assert _rel(y, y64) < 1e-2
    for got, ref in ((x.grad, x64.grad), (layer.lora_A.grad, a64.grad), (layer.lora_B.grad, b64.grad)):
        assert _rel(got, ref) < 2e-2
    adapter_only = layer.scaling * (x64 @ a64.T) @ b64.T  # a wrong reference (no base) fails the bound
    assert _rel(y, adapter_only.detach()) > 0.1
    assert any(t.dtype == qdata.dtype and t.shape == qdata.shape for t in saved)
    assert not any(t.is_floating_point() and t.shape == qdata.shape and t.element_size() > 1 for t in saved)

    delta = layer.lora_B.float() @ layer.lora_A.float() * layer.scaling
    merged = layer.merged_weight()
    assert merged.dtype == torch.bfloat16
    torch.testing.assert_close(merged, (qdata.float() * scale + delta).to(torch.bfloat16))


def test_character_lora_24gb_recipe_composes_to_fp8_with_block_swap():
    from hydra import compose, initialize_config_dir

    from ltxdist.config.schema import validate_config
    from ltxdist.config.store import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=character_lora_24gb", "data.path=/shards"])
    validate_config(cfg)
    m = cfg.model
    assert (m.base_precision, m.gradient_checkpointing, m.offload_blocks) == ("fp8", True, 16)
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.model.dtype) == (32, 32, "bfloat16")
    assert cfg.validation.text_encoder_precision == "fp8"


# -- a LoRA merged into / sampled on the official FP8 layout ------------------------------------------


def _lora_on_block_1(ckpt, path):
    """A LoRA on every attention of block 1 (FP8 in the file below) and block 0 (kept bf16)."""
    model = load_transformer(ckpt, dtype=torch.float32).model
    inject_lora(model, LoRASpec(rank=4, alpha=4, targets=("attn1.to_q", "attn1.to_out.0"), blocks=(0, 1)))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_A.copy_(torch.randn(m.lora_A.shape, generator=g) * 0.2)
                m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.2)
    export_lora(
        model, path, base_model_version="2.3.0", training_strategy="standard", step=1, target_modules=[]
    )
    # The delta as the file holds it (A and B in bf16, alpha/rank baked into B): what a merge must add.
    lora = read_lora_file(path)
    return {
        name: lora.tensors[name + ".lora_B.weight"].double() @ lora.tensors[name + ".lora_A.weight"].double()
        for name in lora.modules
    }


def _within_fp8_rounding(got: torch.Tensor, exact: torch.Tensor, scale: torch.Tensor) -> bool:
    """e4m3 keeps 3 mantissa bits: a rounding error of at most 2^-4 of the value for normal numbers, and
    half the subnormal spacing (2^-10 of the scale) below them; twice that allows for the scale's rounding."""
    bound = exact.abs() * 2**-4 + scale.double() * 2**-9
    return bool(((got - exact).abs() <= 2 * bound).all())


def test_merge_into_the_official_fp8_layout_keeps_the_delta(tiny_ckpt, tmp_path):
    """The merge added B @ A to the raw fp8 values (~1/scale times the weight) and wrote them back at the
    old scale: the delta all but vanished. Now: data * scale + delta, quantized again with a new scale."""
    from ltxdist.lora.export_cli import main as export_main

    fp8_file = write_fp8_checkpoint(tiny_ckpt, tmp_path / "tiny-fp8.safetensors", bf16_blocks=(0,))
    deltas = _lora_on_block_1(tiny_ckpt, tmp_path / "l.safetensors")
    out = tmp_path / "merged-fp8.safetensors"
    export_main(
        ["merge", "--base", str(fp8_file), "--lora", str(tmp_path / "l.safetensors"), "--out", str(out)]
    )
    prefix = "model.diffusion_model."
    with safe_open(str(fp8_file), framework="pt") as f, safe_open(str(out), framework="pt") as g:
        for name, delta in deltas.items():
            key = prefix + name
            if name.startswith("transformer_blocks.0."):  # bf16 in the file: an ordinary merge
                base, merged = f.get_tensor(key + ".weight"), g.get_tensor(key + ".weight")
                assert merged.dtype == torch.bfloat16
                torch.testing.assert_close(merged.double(), base.double() + delta, rtol=1e-2, atol=1e-3)
                continue
            data, scale = f.get_tensor(key + ".weight"), f.get_tensor(key + ".weight_scale")
            new_data, new_scale = g.get_tensor(key + ".weight"), g.get_tensor(key + ".weight_scale")
            assert new_data.dtype == FP8_DTYPE and new_scale.shape == scale.shape == ()
            assert torch.equal(g.get_tensor(key + ".input_scale"), f.get_tensor(key + ".input_scale"))
            exact = data.double() * scale.double() + delta
            assert _within_fp8_rounding(new_data.double() * new_scale.double(), exact, new_scale), name
            # The old arithmetic (delta on the raw values, old scale) is outside the bound: the check bites.
            raw_add = (data.float() + delta.float()).clamp(-448, 448).to(FP8_DTYPE).double() * scale.double()
            assert not _within_fp8_rounding(raw_add, exact, scale), name


def test_sampling_an_fp8_base_reads_its_scales_and_folds_the_loras(tiny_ckpt, tmp_path):
    """ltx-core's builder cast the fp8 data without its scale (weights up to 448) and crashed fusing a LoRA
    into a non-square FP8 layer; the sampler now loads the FP8 file through ltxdist's loader."""
    from ltxdist.sampling.loading import LoRAChoice, fused_transformer

    fp8_file = write_fp8_checkpoint(tiny_ckpt, tmp_path / "tiny-fp8.safetensors", bf16_blocks=(0,))
    deltas = _lora_on_block_1(tiny_ckpt, tmp_path / "l.safetensors")
    cpu = torch.device("cpu")
    plain, _, _ = fused_transformer(fp8_file, [], device=cpu, dtype=torch.float32)
    reference = load_transformer(fp8_file, dtype=torch.float32).model.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in plain.state_dict().items())
    strength = 0.5
    fused, _, _ = fused_transformer(
        fp8_file, [LoRAChoice(tmp_path / "l.safetensors", strength)], device=cpu, dtype=torch.float32
    )
    weights = fused.state_dict()
    for name, delta in deltas.items():
        got = weights[name + ".weight"].double()
        expected = reference[name + ".weight"].double() + strength * delta
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        assert (got - reference[name + ".weight"].double()).norm() > 0.5 * strength * delta.norm()
