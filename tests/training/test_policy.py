"""SVFPolicy: merged-weight training is the SVF layers' own math, exactly, and it gives the model back intact."""

import pytest
import torch

from transformer_squared.adapted import AdaptedModel
from transformer_squared.svd import decompose
from transformer_squared.svf import SVF, ZInit
from transformer_squared.targets import resolve_targets
from transformer_squared.testing import tiny_model
from transformer_squared.training.policy import SVFPolicy

from .tinylm import tiny_lm

IDS = torch.tensor([[5, 17, 3, 99, 42, 8, 1], [7, 7, 60, 2, 11, 120, 33]])


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def loss_of(model):
    out = model(input_ids=IDS).logits  # (B, T, V)
    return torch.log_softmax(out, -1)[..., :-1, :].gather(-1, IDS[:, 1:, None]).sum() * (1 + IDS[:, :1].float()).mean()


def policy(parametrization="direct", targets="mlp"):
    lm = tiny_lm()
    am = AdaptedModel.prepare(lm, targets, progress=False, cache=False)
    return lm, SVFPolicy(am, ZInit(parametrization=parametrization), seed=3)


@pytest.mark.parametrize("parametrization", ["direct", "reference"])
@pytest.mark.parametrize("targets", ["mlp", "all"])
def test_gradient_matches_the_svf_train_mode(parametrization, targets):
    # The reference: SVF layers in `train` mode, W' recomposed inside autograd.
    ref_model = tiny_model("llama")
    svf = SVF.attach(ref_model, decompose(ref_model, resolve_targets(ref_model, targets), cache=False, progress=False))
    ref_params = svf.train_mode(ZInit(parametrization=parametrization), seed=3)
    with torch.no_grad():  # move away from the identity so every term of the chain rule matters
        for p in ref_params:
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    loss_of(ref_model).backward()

    lm, pol = policy(parametrization, targets)
    with torch.no_grad():
        for p, q in zip(pol.parameters(), ref_params):
            p.copy_(q)
    pol.after_update()
    with pol.generating():
        torch.testing.assert_close(logits(lm.model), logits(ref_model), atol=1e-5, rtol=1e-5)
    with pol.grad_pass():
        loss_of(lm.model).backward()
    for p, q in zip(pol.parameters(), ref_params):
        assert q.grad.abs().max() > 0
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-4)


def test_gradient_accumulates_over_micro_batches():
    lm, pol = policy()
    with pol.grad_pass():
        loss_of(lm.model).backward()
    whole = [p.grad.clone() for p in pol.parameters()]
    for p in pol.parameters():
        p.grad = None
    with pol.grad_pass():
        for row in range(2):  # the same loss, one sequence at a time
            out = lm.model(input_ids=IDS[row : row + 1]).logits
            part = torch.log_softmax(out, -1)[..., :-1, :].gather(-1, IDS[row : row + 1, 1:, None]).sum()
            (part * (1 + IDS[:, :1].float()).mean()).backward()
    for p, w in zip(pol.parameters(), whole):
        torch.testing.assert_close(p.grad, w, atol=1e-6, rtol=1e-4)


def test_starts_as_the_base_model_and_gives_it_back_bit_for_bit():
    lm = tiny_lm()
    base_logits = logits(lm.model)
    weights = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    pol = SVFPolicy(AdaptedModel.prepare(lm, "mlp", progress=False, cache=False))
    assert torch.equal(logits(lm.model), base_logits), "z = 1 must be the base model exactly"
    with torch.no_grad():
        for p in pol.parameters():
            p.mul_(1.3)
    pol.after_update()
    with pol.generating():
        changed = logits(lm.model)
    assert (changed - base_logits).abs().max() > 1e-3
    with pol.reference():
        assert torch.equal(logits(lm.model), base_logits)
    assert torch.equal(logits(lm.model), changed), "W' must be back after the reference pass"
    pol.close()
    after = dict(lm.model.named_parameters())
    assert set(after) == set(weights), "SVF wrappers must be gone"
    assert all(torch.equal(after[n], w) for n, w in weights.items())


@pytest.mark.parametrize("parametrization", ["direct", "reference"])
def test_rollouts_use_the_expert_merge_of_the_current_z_bit_for_bit(parametrization):
    lm, pol = policy(parametrization)
    layers = pol.am.svf.layers
    with torch.no_grad():
        for p in pol.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    pol.after_update()
    with pol.generating():
        rollout = {n: m.weight.detach().clone() for n, m in layers.items()}
        versions = [m.weight._version for m in layers.values()]
    z = pol.effective_z()
    for n, m in layers.items():
        assert torch.equal(rollout[n], m.merged_weight(z[n])), n  # what SVF.merge / t2 eval --expert would use
    with pol.grad_pass():
        loss_of(lm.model).backward()
    with pol.generating():  # z unchanged since the last merge: nothing is recomposed or rewritten
        assert [m.weight._version for m in layers.values()] == versions


def test_a_reference_pass_inside_the_gradient_pass_changes_no_gradient():
    lm, pol = policy()
    with torch.no_grad():
        for p in pol.parameters():
            p.mul_(1.2)
    with pol.grad_pass():
        loss_of(lm.model).backward()
    plain = [p.grad.clone() for p in pol.parameters()]
    for p in pol.parameters():
        p.grad = None
    with pol.grad_pass():
        with pol.reference():  # the KL term's base pass, before the policy's forward (as the loop does)
            base = logits(lm.model)
        loss_of(lm.model).backward()
    for p, g in zip(pol.parameters(), plain):
        assert torch.equal(p.grad, g)
    lm2 = tiny_lm()
    assert torch.equal(base, logits(lm2.model))
