"""The objectives against values computed by hand."""

import math

import pytest
import torch

from transformer_squared.training.losses import (kl_to_base, reinforce_loss, rloo_advantages, sft_loss,
                                                 token_logprobs)


def test_rloo_advantage_is_reward_minus_mean_of_the_others():
    r = torch.tensor([[1.0, -1.0, -1.0, 1.0], [-1.0, -1.0, -1.0, -1.0]])
    a = rloo_advantages(r)
    # prompt 0, sample 0: 1 − mean(−1, −1, 1) = 1 + 1/3
    torch.testing.assert_close(a[0], torch.tensor([4 / 3, -4 / 3, -4 / 3, 4 / 3]))
    assert (a[1] == 0).all(), "all-wrong groups carry no signal with a baseline"


def test_single_sample_advantage_is_the_reward_itself():
    r = torch.tensor([[1.0], [-1.0], [-0.1]])
    torch.testing.assert_close(rloo_advantages(r), r)


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
