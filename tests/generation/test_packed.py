"""Packed oneDNN linear layers for CPU decoding (generation/packed.py)."""

import pytest
import torch
from torch import nn

from transformer_squared.generation import Engine, SamplingParams
from transformer_squared.generation.packed import packed_linears, packing_problem, unpack
from transformer_squared.svd import decompose
from transformer_squared.svf import SVF
from transformer_squared.targets import resolve_targets
from transformer_squared.testing import tiny_model

pytestmark = pytest.mark.skipif(packing_problem(nn.Linear(2, 2)) is not None,
                                reason=str(packing_problem(nn.Linear(2, 2))))


def layers():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(24, 40), nn.ReLU(), nn.Linear(40, 8, bias=False))


@torch.no_grad()
def test_packed_layers_compute_the_same_and_are_restored_after():
    net, x = layers(), torch.randn(5, 3, 24)
    want = net(x)
    with packed_linears(net) as on:
        assert on and "forward" in net[0].__dict__
        got = net(x)
    assert "forward" not in net[0].__dict__ and "forward" not in net[2].__dict__
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert unpack(net) == 2 and unpack(net) == 0


@torch.no_grad()
def test_a_weight_changed_in_place_or_replaced_is_repacked():
    net, x = layers(), torch.randn(4, 24)
    with packed_linears(net):
        net(x)
        net[0].weight.mul_(2.0)  # in place: an SVF merge or an optimizer step
        torch.testing.assert_close(net(x), nn.functional.linear(
            torch.relu(nn.functional.linear(x, net[0].weight, net[0].bias)), net[2].weight), rtol=1e-5, atol=1e-5)
        net[2].weight = nn.Parameter(torch.zeros(8, 40))  # replaced
        assert net(x).abs().max() == 0


def test_gradients_flow_through_the_usual_path():
    net, x = layers(), torch.randn(4, 24)
    with packed_linears(net):
        net(x).sum().backward()
    assert net[0].weight.grad is not None and net[0].weight.grad.abs().sum() > 0


def test_off_switch_and_unsupported_models():
    net = layers()
    with packed_linears(net, enabled=False) as on:
        assert not on and "forward" not in net[0].__dict__
    assert packing_problem(layers().to(torch.bfloat16)) == "no fp32 nn.Linear layers"


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_engine_greedy_is_the_same_packed_or_not(arch):
    model = tiny_model(arch)
    prompts = [[3, 17, 29, 4], [8, 9], [11, 12, 13, 14, 15, 16]]
    params = SamplingParams(max_new_tokens=12)
    plain = Engine(model, None, pack_weights=False)
    packed = Engine(model, None)
    assert not plain.pack_weights and packed.pack_weights
    assert [c.token_ids for c in packed.generate(prompts, params)] == \
        [c.token_ids for c in plain.generate(prompts, params)]


def test_merged_svf_experts_decode_packed_with_their_own_weights():
    """A merge writes W' into the wrapped nn.Linear in place: the next packed call must use W', not W."""
    model = tiny_model("llama")
    svf = SVF.attach(model, decompose(model, resolve_targets(model, "mlp"), cache=False, progress=False))
    engine = Engine(model, None)
    prompts, params = [[3, 17, 29, 4], [8, 9]], SamplingParams(max_new_tokens=10)
    base = [c.token_ids for c in engine.generate(prompts, params)]
    z = {name: torch.full_like(layer.S, 1.8) for name, layer in svf.layers.items()}
    svf.merge(z)
    merged = [c.token_ids for c in engine.generate(prompts, params)]
    want = [c.token_ids for c in Engine(model, None, pack_weights=False).generate(prompts, params)]
    svf.restore()
    assert merged == want and merged != base
    assert [c.token_ids for c in engine.generate(prompts, params)] == base


def _fused_copies(model) -> set[str]:
    return {a for m in model.modules() for a in m.__dict__ if a.startswith("_t2_packed_")}


@pytest.mark.parametrize("arch", ["llama", "qwen2"])  # qwen2: q/k/v carry biases, stacked with the weights
def test_fused_projections_decode_as_the_separate_layers(arch):
    """q|k|v and gate|up run as one packed product each; ids equal the unfused, unpacked engine's."""
    model = tiny_model(arch)
    prompts = [[3, 17, 29, 4], [8, 9], [11, 12, 13, 14, 15, 16]]
    params = SamplingParams(max_new_tokens=12)
    want = [c.token_ids for c in Engine(model, None, pack_weights=False).generate(prompts, params)]
    assert not _fused_copies(model)
    assert [c.token_ids for c in Engine(model, None).generate(prompts, params)] == want
    layers = len(model.model.layers)
    assert _fused_copies(model) == {"_t2_packed_qkv", "_t2_packed_gate_up"}
    assert sum("_t2_packed_qkv" in m.__dict__ for m in model.modules()) == layers
    # The separate q/k/v/gate/up layers were never packed on their own: one packed copy of each weight.
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    assert not any("_t2_packed" in m.__dict__ for m in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj))
    singles = sum("_t2_packed" in m.__dict__ for m in model.modules())  # o_proj, down_proj, lm_head
    assert singles == 2 * layers + 1
    assert unpack(model) == 2 * layers + singles
    assert not _fused_copies(model)


@torch.no_grad()
def test_fused_product_equals_the_concatenated_layers_and_follows_weight_changes():
    from transformer_squared.generation.packed import fusable, fused_linear

    torch.manual_seed(0)
    owner = nn.Module()
    a, b = nn.Linear(24, 40), nn.Linear(24, 8, bias=False)
    x = torch.randn(3, 5, 24)
    assert fusable([a, b]) and not fusable([a, nn.Linear(12, 8)])
    assert not fusable([a, nn.Linear(24, 8).to(torch.bfloat16)])
    torch.testing.assert_close(fused_linear(owner, "ab", [a, b], x), torch.cat([a(x), b(x)], -1), rtol=1e-5, atol=1e-5)
    b.weight.mul_(3.0)  # in place, as an SVF merge does
    torch.testing.assert_close(fused_linear(owner, "ab", [a, b], x), torch.cat([a(x), b(x)], -1), rtol=1e-5, atol=1e-5)
    a.bias.add_(1.0)  # a bias too
    torch.testing.assert_close(fused_linear(owner, "ab", [a, b], x), torch.cat([a(x), b(x)], -1), rtol=1e-5, atol=1e-5)
    assert fused_linear(owner, "ab", [a, b], torch.randn(24)) is None  # one row through small weights: unfused
    with torch.enable_grad():
        assert not fusable([a, b])


def test_per_row_svf_layers_are_not_fused():
    """Per-row experts add their own term per row: those layers are called as modules, never stacked."""
    model = tiny_model("llama")
    svf = SVF.attach(model, decompose(model, resolve_targets(model, "all"), cache=False, progress=False))
    prompts, params = [[3, 17, 29, 4], [8, 9, 10, 11]], SamplingParams(max_new_tokens=10)  # in batch order
    z = {name: torch.full_like(layer.S, 1.8) for name, layer in svf.layers.items()}
    svf.set_rows([z, None])
    rows = [c.token_ids for c in Engine(model, None).generate(prompts, params)]
    assert not _fused_copies(model)
    svf.set_rows([z, None])
    assert rows == [c.token_ids for c in Engine(model, None, pack_weights=False).generate(prompts, params)]
    svf.merge(z)  # merged: the same weights for every row, so the stacks are built from W'
    merged = [c.token_ids for c in Engine(model, None).generate(prompts, params)]
    assert _fused_copies(model) == {"_t2_packed_qkv", "_t2_packed_gate_up"}
    assert merged[0] == rows[0]
    svf.restore()


def test_per_row_svf_experts_prefill_as_one_batch_even_when_split_is_asked():
    from transformer_squared.generation.fast_llama import LlamaRunner

    model = tiny_model("llama")
    svf = SVF.attach(model, decompose(model, resolve_targets(model, "mlp"), cache=False, progress=False))
    z = {name: torch.full_like(layer.S, 1.8) for name, layer in svf.layers.items()}
    engine = Engine(model, None)
    ids, mask = engine.left_pad([[3, 17, 29, 4, 5, 6, 7, 8], [8, 9]])
    svf.set_rows([z, None])
    got = LlamaRunner(model).start(ids, mask, 4, split=True)  # rows mode: the whole batch in one forward
    svf.merge(z)
    want = LlamaRunner(model).start(ids[:1], mask[:1], 4)
    svf.restore()
    torch.testing.assert_close(got[:1], want, rtol=1e-4, atol=1e-4)


def test_a_model_holding_packed_weights_can_be_copied_and_saved(tmp_path):
    """bench_generation --bf16 deep-copies a model after the engine packed it: the copy leaves the packed
    weights behind (oneDNN's tensors have no storage) and decodes like the original, in fp32 and in bf16."""
    import copy

    model = tiny_model("llama")
    prompts = [[5, 6, 7, 8], [9, 10]] * 8
    params = SamplingParams(max_new_tokens=6)
    want = [o.token_ids for o in Engine(model, None).generate(prompts, params)]
    assert any(k.startswith("_t2_packed") for m in model.modules() for k in m.__dict__)
    clone = copy.deepcopy(model)
    assert not any(k.startswith("_t2_packed") and v is not None for m in clone.modules() for k, v in m.__dict__.items())
    assert [o.token_ids for o in Engine(clone, None).generate(prompts, params)] == want
    torch.save(model, tmp_path / "model.pt")  # pickling drops them too
    half = Engine(copy.deepcopy(model).to(torch.bfloat16), None).generate(prompts, params)
    assert all(len(o.token_ids) == 6 for o in half)


@torch.no_grad()
def test_per_row_svf_terms_run_packed_and_equal_the_unpacked_layer():
    """Inside packed_linears an SVF layer in rows mode computes its factored per-row term with packed U and Vᵀ:
    the same outputs (to float rounding) and the same greedy ids as unpacked; other modes are untouched."""
    model = tiny_model("llama")
    svf = SVF.attach(model, decompose(model, resolve_targets(model, "mlp"), cache=False, progress=False))
    zs = [{n: 1 + 0.5 * torch.randn(layer.S.shape, generator=torch.Generator().manual_seed(i))
           for n, layer in svf.layers.items()} for i in range(2)]
    layer = next(iter(svf.layers.values()))
    x = torch.randn(3, 5, layer.Vh.shape[1])
    svf.set_rows([zs[0], None, zs[1]])
    want = layer(x)
    with packed_linears(model):
        got = layer(x)
        assert {"_t2_packedU", "_t2_packedVh"} <= set(layer.__dict__)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    prompts, params = [[3, 17, 29, 4], [8, 9, 10, 11], [5, 6, 7, 2]], SamplingParams(max_new_tokens=10)
    svf.set_rows([zs[0], None, zs[1]])
    packed = [c.token_ids for c in Engine(model, None).generate(prompts, params)]
    svf.set_rows([zs[0], None, zs[1]])
    assert packed == [c.token_ids for c in Engine(model, None, pack_weights=False).generate(prompts, params)]
    svf.restore()
    assert unpack(model) >= 2 and "_t2_packedU" not in layer.__dict__
