import pytest
import torch

from transformer_squared.svd import decompose, decompose_matrix
from transformer_squared.svf import SVF, Mode, SVFLinear, ZInit, svf_layers
from transformer_squared.targets import resolve_targets
from transformer_squared.testing import ARCHITECTURES, tiny_model

IDS = torch.tensor([[5, 17, 3, 99, 42, 8, 1], [7, 7, 60, 2, 11, 120, 33]])


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


def attach(arch, targets="mlp", seed=0):
    model = tiny_model(arch, seed=seed)
    names = resolve_targets(model, targets)
    return model, SVF.attach(model, decompose(model, names, cache=False, progress=False))


def random_z(svf, std=0.3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {n: 1 + std * torch.randn(m.rank, generator=g) for n, m in svf.layers.items()}


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("targets", ["mlp", "attn", "all"])
def test_identity_expert_gives_base_logits(arch, targets):
    model = tiny_model(arch)
    base = logits(model)
    _, svf = None, SVF.attach(model, decompose(model, resolve_targets(model, targets), cache=False, progress=False))
    assert svf.layers, "no layer was adapted"
    ones = {n: torch.ones(m.rank) for n, m in svf.layers.items()}
    svf.train_mode(ones)
    assert (logits(model) - base).abs().max() <= 1e-5
    svf.merge(ones)
    assert (logits(model) - base).abs().max() <= 1e-5
    svf.set_rows([ones, None])
    assert (logits(model) - base).abs().max() <= 1e-5


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_merged_equals_recomposed_equals_per_row(arch):
    model, svf = attach(arch)
    z = random_z(svf)
    base = logits(model)
    svf.train_mode(z)
    recomposed = logits(model)
    svf.merge(z)
    merged = logits(model)
    svf.set_rows([z, z])
    rows = logits(model)
    assert (recomposed - base).abs().max() > 1e-2, "the expert changed nothing"
    torch.testing.assert_close(merged, recomposed, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(rows, recomposed, atol=1e-4, rtol=1e-4)


def test_per_row_mixes_experts_in_one_batch():
    model, svf = attach("llama")
    z1, z2 = random_z(svf, seed=1), random_z(svf, seed=2)
    svf.merge(z1)
    a = logits(model, IDS[:1])
    svf.merge(z2)
    b = logits(model, IDS[1:])
    svf.restore()
    base1 = logits(model, IDS[:1])
    svf.set_rows([z1, z2])
    both = logits(model)
    torch.testing.assert_close(both[0], a[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(both[1], b[0], atol=1e-4, rtol=1e-4)
    svf.set_rows([None, z2])
    torch.testing.assert_close(logits(model)[0], base1[0], atol=1e-5, rtol=0)
    svf.select_rows(torch.tensor([1]))
    torch.testing.assert_close(logits(model, IDS[1:])[0], b[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_restore_after_merge_is_bit_exact(arch, dtype):
    model = tiny_model(arch, dtype=dtype)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    svf = SVF.attach(model, decompose(model, resolve_targets(model, "all"), cache=False, progress=False))
    for seed in (1, 2):  # merging twice must still restore the original, not the first merge
        svf.merge(random_z(svf, seed=seed))
    svf.restore()
    svf.detach()
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k


def test_only_z_gets_gradients():
    model, svf = attach("llama", "mlp,attn")
    params = svf.train_mode(ZInit(noise=0.01))
    out = model(input_ids=IDS).logits.logsumexp(-1).mean()
    out.backward()
    assert len(params) == len(svf.layers)
    for p in params:
        assert p.grad is not None and p.grad.abs().sum() > 0
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(n.endswith(".param") for n in trainable) and len(trainable) == len(params)
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)


def test_reference_parametrization_constant_z_is_identity():
    model, svf = attach("qwen2")
    base = logits(model)
    svf.train_mode(ZInit("reference", p_std=0.0))
    torch.testing.assert_close(logits(model), base, atol=1e-5, rtol=0)
    svf.train_mode(ZInit("reference", p_std=0.5), seed=3)
    z = svf.effective_z()
    for n, m in svf.layers.items():  # nuclear norm preserved: Σσz = Σσ
        torch.testing.assert_close((m.S.cpu() * z[n]).sum(), m.S.cpu().sum(), rtol=1e-5, atol=1e-5)
    assert (logits(model) - base).abs().max() > 1e-3


def test_svd_reconstructs_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("T2_CACHE", str(tmp_path))
    model = tiny_model("gpt2")
    names = resolve_targets(model, "mlp")
    f1 = decompose(model, names, progress=False)
    assert list((tmp_path / "svd").glob("*.safetensors"))
    f2 = decompose(model, names, progress=False)
    for n in names:
        assert torch.equal(f1[n].S, f2[n].S)
        W = dict(model.named_modules())[n].weight.t()  # Conv1D: (in, out) storage
        torch.testing.assert_close((f1[n].U * f1[n].S) @ f1[n].Vh, W, atol=1e-5, rtol=1e-4)
    with torch.no_grad():  # changed weights never get stale factors
        dict(model.named_modules())[names[0]].weight.mul_(2)
    f3 = decompose(model, names, progress=False)
    torch.testing.assert_close(f3[names[0]].S, 2 * f1[names[0]].S)


def test_detach_restores_plain_modules():
    model, svf = attach("phi")
    assert svf_layers(model)
    svf.merge(random_z(svf))
    svf.detach()
    assert not svf_layers(model)
    assert not any(isinstance(m, SVFLinear) for m in model.modules())


def test_modes_are_asked_not_set():
    model, svf = attach("llama")
    layer = next(iter(svf.layers.values()))
    assert layer.mode is Mode.BASE and layer.mode.plain_linear and not layer.mode.has_row_state
    with pytest.raises(AttributeError):
        layer.mode = Mode.MERGED  # state changes only through the layer's methods
    z = random_z(svf)
    svf.merge(z)
    assert layer.mode is Mode.MERGED and layer.mode.plain_linear
    svf.set_rows([z, None])
    assert layer.mode is Mode.ROWS and layer.mode.has_row_state and not layer.mode.plain_linear
    svf.train_mode()
    assert layer.mode is Mode.TRAIN and layer.mode.trains and not layer.mode.plain_linear
    assert Mode.ROWS == "rows"  # a str enum: older code comparing with the names keeps working


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_load_merged_and_merged_weight_are_the_merge(arch):
    model, svf = attach(arch)
    z = random_z(svf)
    expected = {n: m.merged_weight(z[n]) for n, m in svf.layers.items()}  # pure: the layers are untouched
    assert all(m.mode is Mode.BASE for m in svf.layers.values())
    base = logits(model)
    svf.merge(z)
    merged = logits(model)
    for n, m in svf.layers.items():
        assert torch.equal(m.weight, expected[n]), n
        assert torch.equal(m.merged_weight(z[n]), expected[n]), "merged_weight must start from the original"
    svf.restore()
    for n, m in svf.layers.items():
        m.load_merged(expected[n])
    assert torch.equal(logits(model), merged)
    svf.restore()
    assert torch.equal(logits(model), base)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_train_mode_computes_the_merged_layer_exactly(arch):
    model, svf = attach(arch)
    z = random_z(svf)
    svf.merge(z)
    merged = logits(model)
    svf.train_mode(z)
    assert torch.equal(logits(model), merged), "TRAIN's value is the merged W' of its z, bit for bit"
    svf.merge_trainable()
    assert all(m.mode is Mode.MERGED and m.param is not None for m in svf.layers.values())
    assert torch.equal(logits(model), merged)
    with svf.base_weights():
        assert torch.equal(logits(model), logits(attach(arch)[0]))
    assert torch.equal(logits(model), merged), "base_weights() gives the state back"
    svf.resume_training()
    assert all(m.mode is Mode.TRAIN for m in svf.layers.values())


@pytest.mark.parametrize("shape", [(12, 20), (20, 12)])  # out > in: factored ∂L/∂x; out < in: dense
def test_train_mode_gradient_is_the_dense_chain_rule(shape):
    # ∂L/∂z_i = σ_i u_iᵀ (∂L/∂W') v_i, with ∂L/∂W' from autograd through a plain linear of the same W'.
    torch.manual_seed(0)
    lin = torch.nn.Linear(*shape).requires_grad_(False)
    f = decompose_matrix(lin.weight.detach())
    layer = SVFLinear(lin, f)
    z0 = 1 + 0.2 * torch.randn(layer.rank)
    (p,) = [layer.start_training(z0)]
    x = torch.randn(3, 5, shape[0], requires_grad=True)
    dy = torch.randn(3, 5, shape[1])
    layer(x).backward(dy)
    w = layer.merged_weight(z0).clone().requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    torch.nn.functional.linear(x2, w, lin.bias).backward(dy)
    dz = f.S * ((f.U.t() @ w.grad) * f.Vh).sum(1)  # (r,)
    torch.testing.assert_close(p.grad, dz, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-5, rtol=1e-5)
