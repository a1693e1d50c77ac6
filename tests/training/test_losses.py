"""The objectives against values computed by hand."""

import math

import pytest
import torch

from transformer_squared.generation import SamplingParams
from transformer_squared.generation.sampling import next_tokens
from transformer_squared.training.losses import (advantages, kl_to_base, reinforce_loss, rloo_advantages,
                                                 sampling_logprobs, sft_loss, token_logprobs, truncated_ratio)


def test_rloo_advantage_is_reward_minus_mean_of_the_others():
    r = torch.tensor([[1.0, -1.0, -1.0, 1.0], [-1.0, -1.0, -1.0, -1.0]])
    a = rloo_advantages(r)
    # prompt 0, sample 0: 1 − mean(−1, −1, 1) = 1 + 1/3
    torch.testing.assert_close(a[0], torch.tensor([4 / 3, -4 / 3, -4 / 3, 4 / 3]))
    assert (a[1] == 0).all(), "all-wrong groups carry no signal with a baseline"


def test_single_sample_advantage_is_the_reward_itself():
    r = torch.tensor([[1.0], [-1.0], [-0.1]])
    torch.testing.assert_close(rloo_advantages(r), r)


def test_without_a_baseline_the_advantage_is_the_raw_reward_even_when_a_group_agrees():
    r = torch.tensor([[1.0, -1.0, -1.0, 1.0], [-1.0, -1.0, -1.0, -1.0]])
    torch.testing.assert_close(advantages(r, "none"), r)  # the paper's REINFORCE: the all-wrong group pushes too
    torch.testing.assert_close(advantages(r, "loo"), rloo_advantages(r))


def test_std_norm_scales_each_group_by_its_reward_spread():
    r = torch.tensor([[1.0, -1.0, -1.0, -1.0], [1.0, 1.0, -1.0, -1.0], [1.0, 1.0, 1.0, 1.0]])
    a = advantages(r, "loo", "std")
    # group 0: loo (2, -2/3, -2/3, -2/3), reward std sqrt(0.75); group 1: loo ±4/3, std 1; group 2: all equal -> 0
    s0 = math.sqrt(0.75)
    torch.testing.assert_close(a[0], torch.tensor([2 / s0, -2 / 3 / s0, -2 / 3 / s0, -2 / 3 / s0]))
    torch.testing.assert_close(a[1], torch.tensor([4 / 3, 4 / 3, -4 / 3, -4 / 3]))
    assert (a[2] == 0).all()
    # the lone success of group 0 now weighs more than a success of the evenly split group 1
    assert a[0, 0] > a[1, 0]
    with pytest.raises(ValueError, match="leave-one-out"):
        advantages(r, "none", "std")


def test_token_logprobs_picks_the_sampled_token():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]]))  # (1, 2, 3)
    tok, full = token_logprobs(logits, torch.tensor([[1, 2]]))
    torch.testing.assert_close(tok, torch.log(torch.tensor([[0.25, 0.8]])))
    torch.testing.assert_close(full.exp().sum(-1), torch.ones(1, 2))


def test_reinforce_loss_sums_tokens_and_averages_sequences():
    token_logp = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -9.0, -9.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # -9 entries are padding
    adv = torch.tensor([1.0, -1.0])
    loss, m = reinforce_loss(token_logp, mask, adv, normalizer=2)
    # −(1·(−3) + (−1)·(−0.5)) / 2 = 1.25
    assert loss.item() == pytest.approx(1.25)
    assert m["logp"] == pytest.approx(-3.5)
    loss.backward()
    # ∂loss/∂log π(ŷ_t) = −A_i / N on real tokens, 0 on padding
    torch.testing.assert_close(token_logp.grad, torch.tensor([[-0.5, -0.5, 0.0], [0.5, 0.0, 0.0]]))


def test_kl_to_base_is_the_exact_per_token_kl_summed_over_the_sequence():
    p = torch.tensor([[[0.5, 0.5], [0.9, 0.1], [0.3, 0.7]]])  # policy, (1, 3, 2)
    q = torch.tensor([[[0.25, 0.75], [0.9, 0.1], [0.5, 0.5]]])  # base
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the third position is padding
    kl = kl_to_base(p.log(), q.log(), mask)
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)  # second position: identical, 0
    assert kl.item() == pytest.approx(expected, rel=1e-6)
    assert kl_to_base(q.log(), q.log(), torch.ones(1, 3)).item() == pytest.approx(0.0, abs=1e-7)


def test_kl_direction_is_policy_to_base():
    # KL(p‖q) ≠ KL(q‖p): the value tells which one is computed.
    p, q = torch.tensor([[[0.9, 0.1]]]), torch.tensor([[[0.5, 0.5]]])
    forward = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert kl_to_base(p.log(), q.log(), torch.ones(1, 1)).item() == pytest.approx(forward, rel=1e-6)


def test_reinforce_loss_adds_the_weighted_kl():
    token_logp = torch.tensor([[-1.0], [-2.0]])
    mask = torch.ones(2, 1)
    kl = torch.tensor([0.3, 0.1])
    loss, m = reinforce_loss(token_logp, mask, torch.tensor([1.0, 1.0]), normalizer=4, kl=kl, kl_coef=0.5)
    assert loss.item() == pytest.approx((3.0 + 0.5 * 0.4) / 4)
    assert m["kl"] == pytest.approx(0.4)


def test_sft_loss_is_mean_negative_loglikelihood_over_target_tokens():
    token_logp = torch.tensor([[-1.0, -3.0], [-2.0, -7.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss, m = sft_loss(token_logp, mask, normalizer=3)
    assert loss.item() == pytest.approx(2.0)
    assert m["nll"] == pytest.approx(6.0)


def test_sampling_logprobs_are_those_of_the_tempered_nucleus():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().view(1, 1, 4)
    tok = lambda i: torch.tensor([[i]])  # noqa: E731
    # T = 1, top-p 0.6: the nucleus is {0, 1} (a token is kept while the mass before it is below top_p)
    assert sampling_logprobs(logits, tok(1), 1.0, 0.6).item() == pytest.approx(math.log(0.3 / 0.8))
    # a sampled token just outside (float rounding between engine and teacher forcing) is counted in
    assert sampling_logprobs(logits, tok(3), 1.0, 0.6).item() == pytest.approx(math.log(0.05 / 0.85))
    # temperature: softmax(logits / T)
    t = torch.softmax(probs.log() / 0.5, -1)
    assert sampling_logprobs(logits, tok(2), 0.5).item() == pytest.approx(math.log(t[2].item()), rel=1e-5)
    # greedy rollouts keep the paper's log pi at T = 1
    assert sampling_logprobs(logits, tok(2), 0.0).item() == pytest.approx(math.log(0.15), rel=1e-5)


def test_sampling_logprobs_match_the_engines_sampler():
    torch.manual_seed(0)
    logits = torch.randn(1, 12) * 2  # (1, V)
    params = SamplingParams(temperature=0.7, top_p=0.8, seed=0)
    g = torch.Generator().manual_seed(0)
    draws = next_tokens(logits.expand(40000, 12), params, g)  # (40000,)
    freq = torch.bincount(draws, minlength=12).float() / len(draws)
    logp = sampling_logprobs(logits.view(1, 1, 12).expand(1, 12, 12), torch.arange(12).view(1, 12), 0.7, 0.8)
    sampled = freq > 0
    # the engine's support is the nucleus, and its frequencies are these probabilities
    torch.testing.assert_close(freq[sampled], logp[0, sampled].exp(), atol=0.01, rtol=0)
    assert logp[0, sampled].exp().sum().item() == pytest.approx(1.0, abs=1e-5)


def test_sampling_logprobs_carry_the_gradient():
    logits = torch.randn(2, 3, 7, requires_grad=True)
    tokens = torch.randint(0, 7, (2, 3))
    sampling_logprobs(logits, tokens, 0.8, 0.9).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_truncated_ratio_is_the_capped_probability_ratio_on_real_tokens():
    train = torch.log(torch.tensor([[0.5, 0.2, 0.9], [0.3, 0.6, 0.1]])).requires_grad_()
    rollout = torch.log(torch.tensor([[0.5, 0.4, 0.3], [0.1, 0.6, 0.5]]))
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # the last entry is padding
    w, m = truncated_ratio(train, rollout, mask, cap=2.0)
    # ratios π_train / π_rollout: 1, 0.5, 3 (capped to 2); 3 (capped), 1; padding weighs 1 (masked anyway)
    torch.testing.assert_close(w, torch.tensor([[1.0, 0.5, 2.0], [2.0, 1.0, 1.0]]))
    assert not w.requires_grad, "the weight is a constant: the gradient flows through log π_train only"
    assert m["tis_sum"] == pytest.approx(8.5) and m["tis_max"] == pytest.approx(3.0)
    assert (m["tis_truncated"], m["tis_tokens"]) == (2.0, 5.0)
    w, m = truncated_ratio(train, rollout, mask, cap=10.0)
    assert m["tis_truncated"] == 0 and w.max().item() == pytest.approx(3.0)


def test_weighted_reinforce_loss_weighs_each_tokens_gradient():
    token_logp = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -9.0, -9.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    adv = torch.tensor([1.0, -1.0])
    weights = torch.tensor([[2.0, 0.5, 1.0], [0.25, 1.0, 1.0]])
    loss, m = reinforce_loss(token_logp, mask, adv, normalizer=2, weights=weights)
    # −(1·(2·(−1) + 0.5·(−2)) + (−1)·(0.25·(−0.5))) / 2 = (3 − 0.125) / 2
    assert loss.item() == pytest.approx(1.4375)
    assert m["logp"] == pytest.approx(-3.5), "the logged log-prob stays unweighted"
    loss.backward()
    torch.testing.assert_close(token_logp.grad, torch.tensor([[-1.0, -0.25, 0.0], [0.125, 0.0, 0.0]]))


def test_a_ratio_of_one_leaves_loss_and_gradient_bit_for_bit():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11)
    tokens = torch.randint(0, 11, (3, 5))
    mask = torch.tensor([[1.0] * 5, [1.0] * 3 + [0.0] * 2, [1.0] + [0.0] * 4])
    adv = torch.tensor([0.7, -1.3, 0.6])

    def loss_and_grad(tis: bool):
        x = logits.clone().requires_grad_()
        logp = sampling_logprobs(x, tokens, 0.8, 0.9)  # (3, 5)
        weights = truncated_ratio(logp, logp.detach().clone(), mask, 2.0)[0] if tis else None
        loss, _ = reinforce_loss(logp, mask, adv, 3.0, weights=weights)
        loss.backward()
        return loss.detach(), x.grad

    # the old loss, as losses.reinforce_loss computed it before importance weights existed
    x = logits.clone().requires_grad_()
    old = -(adv * (sampling_logprobs(x, tokens, 0.8, 0.9) * mask).sum(-1)).sum() / 3.0
    old.backward()
    plain, weighted = loss_and_grad(False), loss_and_grad(True)
    assert torch.equal(plain[0], old.detach()) and torch.equal(plain[1], x.grad)
    # rollouts that sampled from exactly the training distribution: every weight is exactly 1
    assert torch.equal(weighted[0], plain[0]) and torch.equal(weighted[1], plain[1])
