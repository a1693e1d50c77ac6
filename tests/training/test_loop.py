"""The per-step metrics row of an RL step (loop._row): what says whether a run has collapsed onto one answer; the
importance weights of low-precision rollouts in the gradient pass."""

import dataclasses

import pytest
import torch

from transformer_squared.generation import Engine, SamplingParams
from transformer_squared.training import TrainConfig, loop
from transformer_squared.training.distributed import Dist
from transformer_squared.training.loop import _row, gradient_pass, make_policy
from transformer_squared.training.rollout import Batch, DataOrder, rollouts

from .tinylm import tiny_lm, tiny_task


def test_rl_row_reports_agreement_within_groups_and_the_answer_shares():
    # 2 prompts × 2 samples: the first group agrees on "math" (wrong), the second says "math" and "code"
    rewards = torch.tensor([-1.0, -1.0, 1.0, -1.0])
    batch = Batch(examples=[None] * 4, prompts=[[1]] * 4, completions=[[2]] * 4, rewards=rewards,
                  correct=rewards > 0, advantages=torch.tensor([0.0, 0.0, 2.0, -2.0]),
                  answered=torch.ones(4, dtype=torch.bool), answers=["math", "math", "code", "math"], group=2)
    cfg = TrainConfig(out="x", samples_per_prompt=2, temperature=1.0)
    row = _row(1, {"loss": 0.0}, batch, norm=0.0, lr=1e-3, cfg=cfg, d=Dist(), seconds=1.0)
    assert row["mixed"] == 0.5 and row["distinct"] == 1.5
    assert row["answers"] == {"math": 0.75, "code": 0.25}
    assert row["adv_abs"] == pytest.approx(1.0) and row["accuracy"] == 0.25


def test_long_answers_are_cut_in_the_metrics_row():
    rewards = torch.tensor([-1.0, -1.0])
    code = "def f(x):\n    return x + 1  # a whole extracted program"
    batch = Batch(examples=[None] * 2, prompts=[[1]] * 2, completions=[[2]] * 2, rewards=rewards,
                  correct=rewards > 0, advantages=torch.zeros(2), answered=torch.ones(2, dtype=torch.bool),
                  answers=[code, code], group=2)
    row = _row(1, {"loss": 0.0}, batch, norm=0.0, lr=1e-3,
               cfg=TrainConfig(out="x", samples_per_prompt=2, temperature=1.0), d=Dist(), seconds=1.0)
    assert row["answers"] == {code[:32]: 1.0} and row["distinct"] == 1.0


def test_the_row_reports_the_importance_ratios_of_low_precision_rollouts():
    rewards = torch.tensor([1.0, -1.0])
    batch = Batch(examples=[None] * 2, prompts=[[1]] * 2, completions=[[2, 3], [4]], rewards=rewards,
                  correct=rewards > 0, advantages=torch.tensor([1.0, -1.0]), answered=torch.ones(2, dtype=torch.bool),
                  answers=["a", "b"], group=2, rollout_logprobs=[[-0.1, -0.2], [-0.3]])
    cfg = TrainConfig(out="x", samples_per_prompt=2, temperature=1.0)
    sums = {"loss": 0.0, "tis_sum": 3.3, "tis_max": 2.5, "tis_truncated": 1.0, "tis_tokens": 3.0}
    row = _row(1, sums, batch, norm=0.0, lr=1e-3, cfg=cfg, d=Dist(), seconds=1.0)
    assert row["tis_ratio_mean"] == pytest.approx(1.1) and row["tis_ratio_max"] == 2.5
    assert row["tis_truncated"] == pytest.approx(1 / 3)
    exact = dataclasses.replace(batch, rollout_logprobs=None)
    assert not any(k.startswith("tis_") for k in _row(1, {"loss": 0.0}, exact, 0.0, 1e-3, cfg, Dist(), 1.0))


@pytest.mark.parametrize("precision", ["exact", "int8"])
def test_only_low_precision_rollouts_weigh_the_tokens(tmp_path, monkeypatch, precision):
    monkeypatch.setenv("T2_CACHE", str(tmp_path / "cache"))  # the tiny model's SVD
    lm, task = tiny_lm(), tiny_task(tmp_path)
    cfg = TrainConfig(out="x", samples_per_prompt=2, temperature=1.0, rollout_precision=precision).resolved(5)
    policy = make_policy(cfg, lm, progress=False)
    try:
        examples = task.load("train")
        engine = Engine(policy.generation_model, lm.tokenizer, precision=precision)
        params = SamplingParams(max_new_tokens=5, temperature=1.0)
        batch = next(rollouts(policy, engine, lm.tokenizer, task, examples, DataOrder(len(examples), 0),
                              batch_size=3, samples_per_prompt=2, params=params, wrong_reward=-1.0, seed=0,
                              start_step=0, d=Dist()))
        weights = []
        real = loop.reinforce_loss

        def spy(*args):
            weights.append(args[6])
            return real(*args)

        monkeypatch.setattr(loop, "reinforce_loss", spy)
        sums = gradient_pass(policy, batch, cfg, 6.0, lm.tokenizer.pad_token_id, torch.device("cpu"))
        assert weights
        if precision == "exact":  # the loss of before importance weights existed (test_losses: bit for bit)
            assert batch.rollout_logprobs is None and all(w is None for w in weights)
            assert not any(k.startswith("tis_") for k in sums)
        else:
            assert [len(x) for x in batch.rollout_logprobs] == [len(c) for c in batch.completions]
            assert all(w is not None and float(w.max()) <= cfg.tis_cap for w in weights)
            assert sums["tis_tokens"] == batch.completion_tokens and sums["tis_max"] > 0
    finally:
        policy.close()
