"""The per-step metrics row of an RL step (loop._row): what says whether a run has collapsed onto one answer."""

import pytest
import torch

from transformer_squared.training import TrainConfig
from transformer_squared.training.distributed import Dist
from transformer_squared.training.loop import _row
from transformer_squared.training.rollout import Batch


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
