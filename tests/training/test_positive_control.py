"""Positive control for RL: with a reward that is learnable by construction, SVF-RL must learn it.

The reward is +1 when the reply's first word is a number word ("zero" … "nine": 10 of the tiny vocabulary's 128
tokens), −1 otherwise. The tiny random chat model names a number first on ~10-20% of T = 1 samples and never
greedily, and which first token it prefers depends on the prompt, so the policy has to move: a loop that does not
learn (a sign error, a gradient that never reaches z, log-probs of the wrong tokens, advantages that are all 0)
fails here. The assertions are about learning (reward and greedy accuracy before vs after), across 2 seeds.

Settings found by a sweep on the tiny model: lr 0.1 (z of a 2-layer, 288-coordinate model must move by ~0.4),
8 prompts × 8 samples at T = 1 with the leave-one-out baseline, 10 steps; both seeds go from a mean reward of
about −0.85 to above 0 and from 0% to 100% greedy accuracy on held-out prompts.
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


@pytest.mark.parametrize("seed", [0, 1])
def test_rl_learns_a_reward_that_is_learnable_by_construction(tmp_path, seed):
    config = TrainConfig(out=str(tmp_path / "run"), task="control", steps=10, batch_size=8, samples_per_prompt=8,
                         temperature=1.0, lr=0.1, schedule="constant", eval_every=10, valid_limit=-1,
                         test_limit=-1, max_new_tokens=2, micro_batch_tokens=4096, progress=False, seed=seed)
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
