"""The matrix every SVF adapter path passes (as PEFT's tuners pass theirs), on five tiny architectures:
identity at init, forward = merged forward, merge -> unmerge bit-exact, save -> load identical logits,
t2 expert <-> PEFT adapter identical logits. Plus PEFT's adapter management: several adapters, disable, mixing,
merge_and_unload, and the refusal of a mismatched base model."""

import peft
import pytest
import torch

import transformer_squared.peft as t2peft
from transformer_squared.adapted import AdaptedModel
from transformer_squared.errors import T2Error
from transformer_squared.experts import Expert, mix
from transformer_squared.models import LoadedModel
from transformer_squared.testing import tiny_model

ARCHS = ["llama", "qwen2", "gemma", "gpt2", "phi"]
IDS = torch.tensor([[5, 17, 3, 99, 42, 8, 1], [7, 7, 60, 2, 11, 120, 33]])


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def wrap(arch, targets="mlp", **kw):
    return peft.get_peft_model(tiny_model(arch), t2peft.SVFConfig(targets=targets, svd_cache=False, **kw))


def random_z(pm, seed=1, std=0.3):
    g = torch.Generator().manual_seed(seed)
    return {n: 1 + std * torch.randn(m.rank, generator=g) for n, m in pm.base_model.svf_layers().items()}


def weights(model):
    return {k: v.detach().clone() for k, v in model.get_base_model().state_dict().items()}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("targets", ["mlp", "attn", "all"])
def test_identity_at_init(arch, targets):
    base = logits(tiny_model(arch))
    pm = wrap(arch, targets)
    assert pm.base_model.svf_layers(), "no layer was adapted"
    assert (logits(pm) - base).abs().max() <= 1e-5
    trainable = [n for n, p in pm.named_parameters() if p.requires_grad]
    assert trainable and all(".svf_z.default" in n for n in trainable)  # only z trains


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_equals_merged_and_unmerge_is_bit_exact(arch):
    pm = wrap(arch)
    base, before = logits(pm), weights(pm)
    pm.base_model.set_effective_z(random_z(pm))
    recomposed = logits(pm)
    assert (recomposed - base).abs().max() > 1e-2, "the adapter changed nothing"
    pm.merge_adapter()
    torch.testing.assert_close(logits(pm), recomposed, atol=1e-4, rtol=1e-4)
    pm.unmerge_adapter()
    after = weights(pm)
    assert all(torch.equal(before[k], after[k]) for k in before if ".svf_z." not in k)
    torch.testing.assert_close(logits(pm), recomposed, atol=0, rtol=0)
    with pm.disable_adapter():
        torch.testing.assert_close(logits(pm), base, atol=0, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_gives_identical_logits(arch, tmp_path):
    pm = wrap(arch)
    pm.base_model.set_effective_z(random_z(pm))
    want = logits(pm)
    pm.save_pretrained(tmp_path / "a")
    loaded = peft.PeftModel.from_pretrained(tiny_model(arch), tmp_path / "a")
    torch.testing.assert_close(logits(loaded), want, atol=0, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_expert_and_adapter_give_identical_logits(arch, tmp_path):
    # t2 expert -> PEFT adapter
    lm = LoadedModel(tiny_model(arch), None, f"tiny-{arch}", "test", "")
    am = AdaptedModel.prepare(lm, "mlp", progress=False, cache=False)
    g = torch.Generator().manual_seed(3)
    expert = Expert({n: 1 + 0.3 * torch.randn(min(s), generator=g) for n, s in am.shapes().items()},
                    am.expert_meta(name="e", task="t"))
    expert.save(tmp_path / "e")
    with am.using(expert):
        want = logits(am.model)
    t2peft.expert_to_peft(tmp_path / "e", tmp_path / "a")
    pm = peft.PeftModel.from_pretrained(tiny_model(arch), tmp_path / "a")
    torch.testing.assert_close(logits(pm), want, atol=1e-4, rtol=1e-4)
    pm.merge_adapter()
    torch.testing.assert_close(logits(pm), want, atol=1e-5, rtol=1e-5)

    # PEFT adapter -> t2 expert: the same z and metadata as the expert we started from
    back = t2peft.peft_to_expert(tmp_path / "a", tmp_path / "e2")
    back = Expert.load(tmp_path / "e2")
    assert list(back.z) == list(expert.z) and all(torch.equal(back.z[n], expert.z[n]) for n in expert.z)
    original = Expert.load(tmp_path / "e").meta
    assert {k: v for k, v in back.meta.items()} == original
    am2, e2 = AdaptedModel.for_expert(LoadedModel(tiny_model(arch), None, f"tiny-{arch}", "test", ""), tmp_path / "e2",
                                      progress=False, cache=False)
    with am2.using(e2):
        torch.testing.assert_close(logits(am2.model), want, atol=0, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_trained_adapter_converts_to_an_expert_with_the_same_logits(arch, tmp_path):
    pm = wrap(arch, parametrization="reference")  # p is stored: the conversion needs the base model's σ
    want = logits(pm)
    pm.save_pretrained(tmp_path / "a")
    lm = LoadedModel(tiny_model(arch), None, f"tiny-{arch}", "test", "")
    expert = t2peft.peft_to_expert(tmp_path / "a", tmp_path / "e", model=lm)
    for n, z in pm.base_model.effective_z().items():
        torch.testing.assert_close(expert.z[n], z, atol=0, rtol=0)
    am, e = AdaptedModel.for_expert(lm, tmp_path / "e", progress=False, cache=False)
    with am.using(e):
        torch.testing.assert_close(logits(am.model), want, atol=1e-4, rtol=1e-4)


def test_several_adapters_set_adapter_and_weighted_mix(tmp_path):
    pm = wrap("llama")
    za, zb = random_z(pm, seed=1), random_z(pm, seed=2)
    pm.base_model.set_effective_z(za)
    pm.add_adapter("b", t2peft.SVFConfig(targets="mlp", svd_cache=False))
    pm.base_model.set_effective_z(zb, "b")
    assert not any(p.requires_grad for n, p in pm.named_parameters() if ".svf_z.b" in n)  # added: frozen
    a_logits = logits(pm)
    pm.set_adapter("b")
    b_logits = logits(pm)
    assert (a_logits - b_logits).abs().max() > 1e-2

    pm.base_model.add_weighted_adapter(["default", "b"], [0.25, 0.75], "ab")
    want = mix([Expert(za), Expert(zb)], [0.25, 0.75]).z
    got = pm.base_model.effective_z("ab")
    assert all(torch.equal(got[n], want[n]) for n in want)
    pm.set_adapter("ab")
    ab_logits = logits(pm)
    ref = wrap("llama")
    ref.base_model.set_effective_z(want)
    torch.testing.assert_close(ab_logits, logits(ref), atol=0, rtol=0)

    # two active adapters add their deltas; merging them gives the same model, and unmerging the base
    pm.base_model.set_adapter(["default", "b"])
    both = logits(pm)
    pm.merge_adapter()
    torch.testing.assert_close(logits(pm), both, atol=1e-4, rtol=1e-4)
    pm.unmerge_adapter()
    with pm.disable_adapter():
        torch.testing.assert_close(logits(pm), logits(tiny_model("llama")), atol=0, rtol=0)


def test_merge_and_unload_gives_a_plain_model_with_the_merged_weights():
    pm = wrap("gpt2", "all")
    pm.base_model.set_effective_z(random_z(pm))
    want = logits(pm)
    plain = pm.merge_and_unload()
    assert not any("svf" in n for n, _ in plain.named_modules())
    assert type(plain.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
    torch.testing.assert_close(logits(plain), want, atol=1e-4, rtol=1e-4)


def test_target_modules_peft_style_and_the_recorded_targets():
    pm = peft.get_peft_model(tiny_model("llama"), t2peft.SVFConfig(target_modules=["q_proj", "v_proj"],
                                                                    svd_cache=False))
    cfg = pm.peft_config["default"]
    assert sorted(cfg.shapes) == sorted(f"model.layers.{i}.self_attn.{p}_proj" for i in (0, 1) for p in "qv")
    assert cfg.base_identity["fingerprint"] and cfg.base_identity["architecture"] == "LlamaForCausalLM"
    assert set(cfg.targets.split(",")) == set(cfg.shapes)  # t2 resolves the same modules from an expert's targets


def test_an_adapter_for_other_weights_is_refused_in_one_line(tmp_path):
    pm = wrap("llama")
    pm.save_pretrained(tmp_path / "a")
    with pytest.raises(T2Error, match="made for .* not for these weights") as e:
        peft.PeftModel.from_pretrained(tiny_model("llama", seed=1), tmp_path / "a")
    assert "\n" not in str(e.value)
    cfg = t2peft.SVFConfig.from_pretrained(str(tmp_path / "a"))
    cfg.allow_transfer = True
    peft.PeftModel.from_pretrained(tiny_model("llama", seed=1), tmp_path / "a", config=cfg)


def test_bad_configs_are_one_line_errors():
    with pytest.raises(T2Error, match="parametrization"):
        t2peft.SVFConfig(parametrization="sigmoid")
    with pytest.raises(T2Error, match="match no linear layer"):
        peft.get_peft_model(tiny_model("llama"), t2peft.SVFConfig(target_modules=["nope"], svd_cache=False))


def test_bf16_merge_unmerge_is_bit_exact():
    pm = peft.get_peft_model(tiny_model("llama", dtype=torch.bfloat16), t2peft.SVFConfig(svd_cache=False))
    before = weights(pm)
    assert all(p.dtype == torch.float32 for n, p in pm.named_parameters() if "svf_z" in n)
    pm.base_model.set_effective_z(random_z(pm))
    recomposed = logits(pm)
    pm.merge_adapter()
    torch.testing.assert_close(logits(pm), recomposed, atol=0.1, rtol=0.05)
    pm.unmerge_adapter()
    after = weights(pm)
    assert all(torch.equal(before[k], after[k]) for k in before if ".svf_z." not in k)
