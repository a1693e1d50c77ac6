"""Positive control for RL: with a reward that is learnable by construction, SVF-RL must learn it.

The reward is +1 when the reply's first word is a number word ("zero" … "nine": 10 of the tiny vocabulary's 128
tokens), −1 otherwise. The tiny random chat model names a number first on ~10-20% of T = 1 samples and never
greedily, and which first token it prefers depends on the prompt, so the policy has to move: a loop that does not
learn (a sign error, a gradient that never reaches z, log-probs of the wrong tokens, advantages that are all 0)
fails here. The assertions are about learning (reward and greedy accuracy before vs after), across 2 seeds.

Settings found by a sweep on the tiny model: lr 0.1 (z of a 2-layer, 288-coordinate model must move by ~0.4),
8 prompts × 8 samples at T = 1 with the leave-one-out baseline, 10 steps; both seeds go from a mean reward of
about −0.85 to above 0 and from 0% to 100% greedy accuracy on held-out prompts.

The same control runs with int8 rollouts (`rollout_precision`, truncated importance weights in the loss) and must
learn by the same margins. Measured: reward before → after, exact vs int8, seed 0: −0.89 → 0.23 vs −0.91 → 0.26;
seed 1: −0.67 → 0.81 vs −0.67 → 0.80; the fp32 / int8 probability ratio of the sampled tokens has a mean within
1 ± 0.01 at every step and a maximum of 1.1-1.7 (none capped at 2).
"""

from __future__ import annotations

import json

import pytest

from transformer_squared.tasks import Example, Task, Verdict
from transformer_squared.training import TrainConfig, train

from .tinylm import NUMBERS, tiny_lm


class FirstWordIsANumber(Task):
    """Prompts "what is a plus b"; correct when the reply starts with any number word (not the sum)."""

    name = "first-word-control"
    domain = "control"
    splits = ("train", "valid", "test")
    max_new_tokens = 2

    def load(self, split=None, data_dir=None):
        rows = [Example(id=f"{a}+{b}", prompt=f"what is {NUMBERS[a]} plus {NUMBERS[b]}", answer="a number word")
                for a in range(10) for b in range(10)]
        k = self.splits.index(split or "test")
        return [r for i, r in enumerate(rows) if i % 3 == k]  # 34 / 33 / 33 disjoint prompts

    def messages(self, example):
        return [{"role": "user", "content": example.prompt}]

    def score(self, example, output):
        words = output.split()
        first = words[0] if words else None
        return Verdict(first in NUMBERS, first)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("T2_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("precision", ["exact", pytest.param("int8", marks=pytest.mark.slow)])  # 1.5-3 s each
@pytest.mark.parametrize("seed", [0, 1])
def test_rl_learns_a_reward_that_is_learnable_by_construction(tmp_path, seed, precision):
    config = TrainConfig(out=str(tmp_path / "run"), task="control", steps=10, batch_size=8, samples_per_prompt=8,
                         temperature=1.0, lr=0.1, schedule="constant", eval_every=10, valid_limit=-1,
                         test_limit=-1, max_new_tokens=2, micro_batch_tokens=4096, progress=False, seed=seed,
                         rollout_precision=precision)
    result = train(config, model=tiny_lm(seed), task=FirstWordIsANumber())
    rows = [json.loads(line) for line in (result.out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["step"] > 0]
    before = sum(r["reward"] for r in steps[:2]) / 2
    after = sum(r["reward"] for r in steps[-3:]) / 3
    assert before < -0.5, f"the control must start hard (reward {before:.2f}), or learning proves nothing"
    assert after > before + 0.6, f"mean reward {before:.2f} -> {after:.2f}: RL did not learn"

    valid = {v["step"]: v["accuracy"] for v in result.valid}
    assert valid[0] <= 0.2 and valid[10] >= valid[0] + 0.6, f"greedy validation accuracy by step: {valid}"
    assert result.best_step == 10 and result.test["accuracy"] >= 0.6, result.test  # held-out prompts too

    # the per-step diagnostics say why it learned: groups with mixed rewards, z moved, answers extractable
    assert all(0 <= r["mixed"] <= 1 and 0 <= r["no_answer"] <= 1 for r in steps)
    assert max(r["mixed"] for r in steps) >= 0.5
    assert rows[0]["z_drift"] == 0 and steps[-1]["z_drift"] > 0.05

    if precision == "exact":  # no importance weights at all
        assert not any(k.startswith("tis_") for r in steps for k in r)
    else:  # the weights were applied, and int8 rollouts sampled close to the fp32 policy
        for r in steps:
            assert 0.5 < r["tis_ratio_mean"] < 2 and r["tis_ratio_max"] >= r["tis_ratio_mean"]
            assert 0 <= r["tis_truncated"] < 0.2
