"""Low-precision decoding (generation/precision.py): the choice of kernel, the int8 / bf16 products, the engine
in each precision, and SVF experts (merged and per-row) under them."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from transformer_squared.errors import T2Error
from transformer_squared.generation import Engine, SamplingParams
from transformer_squared.generation import precision as lowp
from transformer_squared.generation.packed import packed_linears, unpack
from transformer_squared.svd import decompose
from transformer_squared.svf import SVF
from transformer_squared.targets import resolve_targets
from transformer_squared.testing import tiny_model

CPU = torch.device("cpu")
needs_int8 = pytest.mark.skipif(lowp.int8_problem(CPU) is not None, reason=str(lowp.int8_problem(CPU)))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error of a against b (Frobenius)."""
    return float((a - b).norm() / b.norm())


# -- which precision -------------------------------------------------------------------------------------------
def test_the_precision_choices_agree_with_the_configs():
    from transformer_squared.evaluation import PRECISIONS

    assert PRECISIONS == lowp.PRECISIONS


@pytest.mark.parametrize("features, want", [
    ({"avx2", "amx_bf16", "amx_tile"}, "bf16"),
    ({"avx2", "avx512_bf16"}, "bf16"),
    ({"avx2", "fma3"}, "int8"),
])
def test_fast_picks_bf16_on_native_bf16_cpus_and_int8_elsewhere(monkeypatch, features, want):
    monkeypatch.setattr(lowp, "cpu_features", lambda: frozenset(features))
    monkeypatch.setattr(lowp, "int8_problem", lambda device: None)
    assert lowp.resolve_precision("fast", CPU, torch.float32)[0] == want
    assert lowp.resolve_precision("exact", CPU, torch.float32) == ("exact", "requested")


def test_fast_on_a_gpu_is_bf16_and_int8_there_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    gpu = torch.device("cuda", 0)
    assert lowp.resolve_precision("fast", gpu, torch.float32)[0] == "bf16"
    assert lowp.resolve_precision("bf16", gpu, torch.float32)[0] == "bf16"
    with pytest.raises(T2Error, match="int8 runs on CPUs"):
        lowp.resolve_precision("int8", gpu, torch.float32)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert lowp.resolve_precision("fast", gpu, torch.float32)[0] == "exact"


def test_a_model_that_is_not_fp32_stays_as_it_is_and_bad_names_are_refused():
    assert lowp.resolve_precision("fast", CPU, torch.bfloat16) == ("exact", "the model is already torch.bfloat16")
    with pytest.raises(T2Error, match="converts fp32 weights"):
        lowp.resolve_precision("int8", CPU, torch.bfloat16)
    with pytest.raises(T2Error, match="precision must be one of"):
        lowp.resolve_precision("fp8", CPU, torch.float32)
    with pytest.raises(T2Error, match="precision must be one of"):
        Engine(tiny_model("llama"), None, precision="half")


def test_configs_validate_the_precision():
    from transformer_squared.evaluation import EvalConfig
    from transformer_squared.serving.config import ServeConfig

    assert EvalConfig(task="x").precision == "exact" and ServeConfig().precision == "exact"
    with pytest.raises(T2Error, match="--precision must be one of"):
        EvalConfig(task="x", precision="fp8")
    with pytest.raises(T2Error, match="precision must be one of"):
        ServeConfig(precision="fp8")


# -- the kernels -----------------------------------------------------------------------------------------------
@needs_int8
@torch.no_grad()
def test_int8_product_is_close_to_fp32_with_bias_and_any_leading_shape():
    torch.manual_seed(0)
    w, b = torch.randn(96, 64) / 8, torch.randn(96)
    prepared = lowp.prepare("int8", w, b)
    # one row (batch-1 decoding) skips the per-row rescale: its own scale fits it, whatever its size
    for x in (torch.randn(64), torch.randn(1, 1, 64) * 1e3, torch.randn(5, 64), torch.randn(3, 7, 64)):
        y = lowp.run(prepared, x)
        assert y.shape == x.shape[:-1] + (96,) and y.dtype == torch.float32
        assert _rel(y, F.linear(x, w, b)) < 0.03


@needs_int8
@torch.no_grad()
def test_int8_rows_of_very_different_sizes_keep_their_accuracy():
    """fbgemm quantises its whole input with one scale: without the per-row rescale, a small row next to a
    large one would lose all its bits."""
    torch.manual_seed(1)
    w = torch.randn(48, 64) / 8
    x = torch.randn(2, 64) * torch.tensor([[1e-3], [1e3]])
    y = lowp.run(lowp.prepare("int8", w, None), x)
    for i in range(2):
        assert _rel(y[i], F.linear(x[i], w)) < 0.03


@needs_int8
@torch.no_grad()
def test_int8_does_not_saturate_on_large_same_sign_inputs():
    """Without VNNI, AVX2's pair sums of u8 x s8 saturate at 2^15: with full 8-bit weights, inputs and weights
    all large and of one sign gave wrong outputs; 7-bit weights keep them exact up to rounding."""
    w = torch.ones(16, 256) + 0.01 * torch.arange(256) / 256
    x = torch.ones(4, 256) * 3.0
    y = lowp.run(lowp.prepare("int8", w, None), x)
    assert _rel(y, F.linear(x, w)) < 0.01
    assert lowp.int8_weight_max() == (127 if "avx512_vnni" in lowp.cpu_features() else 63)


@torch.no_grad()
def test_bf16_product_is_close_to_fp32_and_returns_fp32():
    torch.manual_seed(2)
    w, b, x = torch.randn(40, 24), torch.randn(40), torch.randn(3, 5, 24)
    y = lowp.run(lowp.prepare("bf16", w, b), x)
    assert y.dtype == torch.float32 and _rel(y, F.linear(x, w, b)) < 0.01


@pytest.mark.parametrize("precision", ["int8", "bf16"])
@torch.no_grad()
def test_low_precision_layers_are_patched_follow_weight_changes_and_are_restored(precision):
    if precision == "int8" and lowp.int8_problem(CPU):
        pytest.skip(lowp.int8_problem(CPU))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(24, 40), nn.ReLU(), nn.Linear(40, 8, bias=False))
    x = torch.randn(4, 24)
    want = net(x)
    with packed_linears(net, enabled=False, precision=precision) as on:  # enabled=False turns off exact packing only
        assert on and "forward" in net[0].__dict__
        got = net(x)
        assert got.dtype == torch.float32 and got.ne(want).any() and _rel(got, want) < 0.05
        net[2].weight.mul_(2.0)  # in place, as an SVF merge: the low-precision copy is rebuilt
        assert _rel(net(x), 2 * want) < 0.05
        with torch.enable_grad():
            x.requires_grad_(True)
            net(x).sum().backward()  # gradients take the usual fp32 path
            assert net[0].weight.grad is not None
    assert "forward" not in net[0].__dict__
    assert any(a.endswith(f":{precision}") for a in net[0].__dict__)
    unpack(net)
    assert not any(a.startswith("_t2_packed") for m in net.modules() for a in m.__dict__)


# -- the engine ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["int8", "bf16"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@torch.no_grad()
def test_engine_in_low_precision_fuses_its_products_and_stays_close_to_exact(arch, precision):
    if precision == "int8" and lowp.int8_problem(CPU):
        pytest.skip(lowp.int8_problem(CPU))
    model = tiny_model(arch)
    exact, low = Engine(model, None), Engine(model, None, precision=precision)
    assert low.compute_precision == precision and low.precision_info["precision"] == precision
    ids, mask = exact.left_pad([[3, 17, 29, 4, 5, 6], [8, 9, 10]])
    with exact.batch():
        want = exact.new_runner(16).start(ids, mask, 4)  # (2, V) first-token logits
    with low.batch():
        runner = low.new_runner(16)
        got = runner.start(ids, mask, 4)
        step = runner.step(got.argmax(-1))
    assert _rel(got, want) < 0.15 and got.ne(want).any()  # random weights: errors add up over layers
    fused = {a for m in model.modules() for a in m.__dict__ if a.startswith("_t2_packed_")}
    assert {f"_t2_packed_qkv:{precision}", f"_t2_packed_gate_up:{precision}"} <= fused
    assert step.shape == got.shape and torch.isfinite(step).all()
    outs = low.generate([[3, 17, 29, 4], [8, 9]], SamplingParams(max_new_tokens=8))
    assert [len(o.token_ids) for o in outs] == [8, 8]


def test_exact_engine_is_untouched_by_a_low_precision_one():
    """The exact engine's greedy ids are those of `model.generate` (test_engine); a low-precision engine on the
    same model in between changes nothing for it."""
    model = tiny_model("llama")
    prompts, params = [[3, 17, 29, 4], [8, 9]], SamplingParams(max_new_tokens=10)
    before = [c.token_ids for c in Engine(model, None).generate(prompts, params)]
    Engine(model, None, precision="bf16").generate(prompts, params)
    assert [c.token_ids for c in Engine(model, None).generate(prompts, params)] == before
    engine = Engine(model, None, precision="bf16")
    engine.set_precision("exact")
    assert engine.compute_precision == "exact"
    assert [c.token_ids for c in engine.generate(prompts, params)] == before


# -- SVF experts -----------------------------------------------------------------------------------------------
def _svf(model, targets="mlp"):
    return SVF.attach(model, decompose(model, resolve_targets(model, targets), cache=False, progress=False))


@needs_int8
@torch.no_grad()
def test_merged_experts_are_quantised_from_their_own_weights():
    """A merge changes the weights in place: the int8 copies are rebuilt from W' (not W), and restoring gives
    the int8 base model's outputs back."""
    model = tiny_model("llama")
    svf = _svf(model)
    engine = Engine(model, None, precision="int8")
    ids, mask = engine.left_pad([[3, 17, 29, 4], [8, 9]])

    def logits():
        with engine.batch():
            return engine.new_runner(8).start(ids, mask, 2)

    base = logits()
    z = {name: torch.full_like(layer.S, 1.8) for name, layer in svf.layers.items()}
    svf.merge(z)
    merged = logits()
    exact_merged = Engine(model, None)
    with exact_merged.batch():
        want = exact_merged.new_runner(8).start(ids, mask, 2)
    svf.restore()
    assert _rel(merged, want) < 0.15 and _rel(merged, base) > 3 * _rel(merged, want)
    torch.testing.assert_close(logits(), base, rtol=0, atol=0)


@needs_int8
@torch.no_grad()
def test_per_row_experts_run_an_int8_base_and_an_exact_per_row_term():
    """Per-row z: the base product is int8, the per-row term fp32. Rows whose z is 1 everywhere compute exactly
    the int8 base model (the term is 0); an expert's row is close to the same expert merged."""
    model = tiny_model("llama")
    svf = _svf(model)
    engine = Engine(model, None, precision="int8")
    ids, mask = engine.left_pad([[3, 17, 29, 4], [8, 9, 10, 11]])

    def logits():
        with engine.batch():
            return engine.new_runner(8).start(ids, mask, 2)

    base = logits()
    svf.set_rows([None, None])
    torch.testing.assert_close(logits(), base, rtol=0, atol=0)
    z = {name: torch.full_like(layer.S, 1.8) for name, layer in svf.layers.items()}
    svf.set_rows([z, None])
    mixed = logits()
    layer = next(iter(svf.layers.values()))
    assert {"_t2_packedU", "_t2_packedVh"} <= set(layer.__dict__)  # the term ran exact, packed
    assert not any(a.endswith(":int8") for a in layer.__dict__)  # the SVF layer itself holds no int8 copy
    assert any(a.endswith(":int8") for a in layer.base.__dict__)  # its base linear does
    svf.merge(z)
    merged = logits()
    svf.restore()
    assert _rel(mixed[0], merged[0]) < 0.15 and _rel(mixed[1], base[1]) < 0.15
    prompts, params = [[3, 17, 29, 4], [8, 9, 10, 11]], SamplingParams(max_new_tokens=6)
    svf.set_rows([z, None])
    outs = engine.generate(prompts, params)
    svf.restore()
    assert [len(o.token_ids) for o in outs] == [6, 6]


# -- evaluation ------------------------------------------------------------------------------------------------
@needs_int8
def test_evaluation_records_the_precision_it_ran_with(tmp_path, embedded):
    import json

    from transformer_squared.evaluation import EvalConfig, evaluate
    from transformer_squared.tasks import get_task

    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"id": "a", "prompt": "What is 2 + 3? Answer with the number only.", "answer": "5"})
                  + "\n")
    summary, records = evaluate(embedded.model, embedded.tokenizer,
                                EvalConfig(task="x", max_new_tokens=4, precision="fast"),
                                task=get_task(f"custom:{qa}"), progress=False)
    assert summary["config"]["precision"] == "fast"
    assert summary["config"]["compute_precision"] == lowp.resolve_precision("fast", CPU, torch.float32)[0]
    assert records[0]["tokens"] >= 1
