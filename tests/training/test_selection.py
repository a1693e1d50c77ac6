"""Best-step selection: the base model (step 0) is a candidate, validation is a seeded subset of the split."""

from __future__ import annotations

import json

import pytest

from transformer_squared.evaluation import select_examples
from transformer_squared.experts import Expert
from transformer_squared.tasks import Verdict
from transformer_squared.training import TrainConfig, train

from .test_positive_control import FirstWordIsANumber
from .tinylm import NUMBERS, tiny_lm

# Each test is a training run with validation: ~1.6 s each on 2 shared cores.
pytestmark = pytest.mark.slow


class FirstWordIsNotANumber(FirstWordIsANumber):
    """The base model already never starts with a number when greedy: 100% on validation that training can only
    keep or lose, so the step-0 state must be what is shipped."""

    def score(self, example, output):
        words = output.split()
        first = words[0] if words else None
        return Verdict(first is not None and first not in NUMBERS, first)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("T2_CACHE", str(tmp_path / "cache"))


def run(tmp_path, name, task=None, **kw):
    config = TrainConfig(**{**dict(out=str(tmp_path / name), task="control", steps=3, batch_size=8,
                                   samples_per_prompt=4, temperature=1.0, lr=0.1, schedule="constant", eval_every=3,
                                   valid_limit=-1, test_limit=4, max_new_tokens=2, micro_batch_tokens=4096,
                                   progress=False), **kw})
    return train(config, model=tiny_lm(), task=task or FirstWordIsNotANumber())


def test_an_expert_no_better_than_the_base_on_validation_is_the_base(tmp_path):
    result = run(tmp_path, "base")
    valid = {v["step"]: v["accuracy"] for v in result.valid}
    assert valid[0] == 1.0 and set(valid) == {0, 3}  # the base model, validated before any step
    assert result.best_step == 0
    expert = Expert.load(result.expert)
    assert expert.stats()["max_abs_dev"] == 0  # z = 1 exactly
    m = expert.meta["metrics"]
    assert m["selected_step"] == 0 and m["beats_base"] is False and "base model" in m["note"]
    assert m["base_valid"]["accuracy"] == 1.0
    rows = [json.loads(line) for line in (result.out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0] == {"step": 0, "valid_accuracy": 1.0, "z_drift": 0.0} and rows[-1]["z_drift"] > 0  # z did move


def test_without_select_base_the_best_trained_step_is_kept(tmp_path):
    result = run(tmp_path, "paper", select_base=False)
    assert [v["step"] for v in result.valid] == [3] and result.best_step == 3
    expert = Expert.load(result.expert)
    assert expert.stats()["max_abs_dev"] > 0 and "beats_base" not in expert.meta["metrics"]


def test_validation_is_a_seeded_subset_not_the_first_examples(tmp_path):
    class Recording(FirstWordIsNotANumber):
        scored: list[str] = []

        def score(self, example, output):
            self.scored.append(example.id)
            return super().score(example, output)

    task = Recording()
    valid_ids = {e.id for e in task.load("valid")}
    result = run(tmp_path, "subset", task=task, valid_limit=10, test_limit=0)
    assert [v["n"] for v in result.valid] == [10, 10]
    validated = [i for i in task.scored if i in valid_ids]
    assert len(validated) == 20
    # evaluation's seeded subset (seed 0, whatever the training seed), the same at every validation
    want = [e.id for e in select_examples(task.load("valid"), 10, 0)]
    assert validated[:10] == validated[10:] == want
    assert want != [e.id for e in task.load("valid")[:10]]
