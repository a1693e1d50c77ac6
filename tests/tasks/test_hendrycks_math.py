"""MATH and MATH500: splits, ids, and reference solutions agreeing with the gold answers."""

import pytest

from transformer_squared.tasks import get_task
from transformer_squared.tasks.hendrycks_math import SYSTEM
from transformer_squared.tasks.scoring import extract_math_answer, verify_math


@pytest.mark.slow  # reads all 12,500 problems: ~1 s on 2 shared cores
def test_splits_and_ids(shared_data):
    task = get_task("math")
    sizes = {s: len(task.load(s, shared_data)) for s in task.splits}
    assert sizes == {"train": 3750, "valid": 3750, "test": 5000}
    test = task.load("test", shared_data)
    assert test[0].id == "test/algebra/1.json"
    m500 = get_task("math500").load("test", shared_data)
    assert len(m500) == 500
    assert {ex.id for ex in m500} <= {ex.id for ex in test}
    assert get_task("math500").splits == ("test",)


def test_prompt(shared_data):
    task = get_task("math500")
    ex = task.load("test", shared_data)[0]
    assert task.messages(ex) == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ex.prompt}]
    assert "\\boxed{}" in SYSTEM and task.max_new_tokens == 1024 and task.domain == "math"


def test_math500_solutions_agree_with_answer_field(shared_data):
    task = get_task("math500")
    examples = task.load("test", shared_data)
    verdicts = task.score_many(examples, [ex.solution for ex in examples])
    assert all(v.correct for v in verdicts), [(ex.id, v.extracted, ex.answer)
                                              for ex, v in zip(examples, verdicts) if not v.correct]


@pytest.mark.slow
def test_the_grader_accepts_every_math500_answer(shared_data):
    """The scorer skips the grader for identical strings (as every MATH500 reference answer is): here math-verify
    itself must parse each gold answer and find each reference solution's answer equal to it (15-30 s)."""
    examples = get_task("math500").load("test", shared_data)
    wrong = [(ex.id, ex.answer) for ex in examples if not verify_math(extract_math_answer(ex.solution), ex.answer)]
    assert wrong == []


@pytest.mark.slow  # a bounded-scoring helper process
def test_wrong_and_equivalent_outputs(shared_data):
    task = get_task("math500")
    ex = next(e for e in task.load("test", shared_data) if e.answer == "\\frac{14}{3}")
    v = task.score(ex, "So the answer is $\\boxed{\\dfrac{14}{3}}$.")
    assert v.correct and v.extracted == "\\dfrac{14}{3}"     # reported as written, compared by math-verify
    assert task.score(ex, "\\boxed{4\\frac{2}{3}}").correct   # a mixed number
    assert task.score(ex, "\\boxed{14/3}").correct
    assert not task.score(ex, "\\boxed{4.67}").correct
    v = task.score(ex, "The answer is 14/3.")           # no \boxed: not extracted, never guessed
    assert not v.correct and v.extracted is None
