"""Cross-model transfer: refused across shapes, allowed across weights only when asked; the shuffled control."""

import pytest
import torch

from transformer_squared.adaptation.expert_set import ExpertSet
from transformer_squared.adaptation.transfer import shuffle_expert, shuffle_expert_set
from transformer_squared.errors import T2Error
from transformer_squared.experts import Expert

from .conftest import random_experts, tiny_adapted


def _other_shape_model():
    import transformers as tf

    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=128, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return tf.LlamaForCausalLM(config).eval()


def test_shuffle_keeps_each_matrix_multiset_and_changes_the_order(tiny_am):
    expert = random_experts(tiny_am)["math"]
    shuffled = shuffle_expert(expert, seed=0)
    assert list(shuffled.z) == list(expert.z)
    for n, z in expert.z.items():
        assert torch.equal(torch.sort(shuffled.z[n]).values, torch.sort(z).values)
        assert not torch.equal(shuffled.z[n], z)
    assert shuffled.meta["shuffled"] == {"from": "math", "seed": 0, "within": "matrix"}
    again = shuffle_expert(expert, seed=0)
    assert all(torch.equal(again.z[n], shuffled.z[n]) for n in expert.z)  # seeded
    other = shuffle_expert(expert, seed=1)
    assert any(not torch.equal(other.z[n], shuffled.z[n]) for n in expert.z)
    tiny_am.check(shuffled)  # still fits the model it came from


def test_shuffle_expert_set_shuffles_domain_experts_only(tiny_am):
    experts = random_experts(tiny_am)
    dispatch = Expert.random(tiny_am.shapes(), 0.1, seed=9)
    es = ExpertSet.from_experts(experts, dispatch=dispatch)
    shuffled = shuffle_expert_set(es, 5)
    assert shuffled.dispatch is dispatch and shuffled.domains == es.domains
    for d in es.domains:
        n = next(iter(experts[d].z))
        assert not torch.equal(shuffled.experts[d].z[n], experts[d].z[n])


def test_transfer_refused_across_shapes_and_needs_consent_across_weights(tmp_path):
    source = tiny_adapted(seed=0)
    expert = random_experts(source)["math"]
    expert.save(tmp_path / "math")
    same_shapes = tiny_adapted(seed=1)  # same architecture and shapes, other weights
    with pytest.raises(T2Error, match="pass --allow-transfer"):
        same_shapes.load_expert(tmp_path / "math")
    loaded = same_shapes.load_expert(tmp_path / "math", allow_transfer=True)
    assert all(torch.equal(loaded.z[n], expert.z[n]) for n in expert.z)
    with pytest.raises(T2Error, match="pass --allow-transfer"):
        ExpertSet.load(tmp_path, same_shapes)
    assert ExpertSet.load(tmp_path, same_shapes, allow_transfer=True).domains == ["math"]
    other_shapes = tiny_adapted(model=_other_shape_model())
    with pytest.raises(T2Error, match="wrong model"):
        other_shapes.load_expert(tmp_path / "math", allow_transfer=True)  # consent does not bend shapes
    gpt2 = tiny_adapted("gpt2")
    with pytest.raises(T2Error, match="they differ"):
        gpt2.load_expert(tmp_path / "math", allow_transfer=True)
