"""ARC-Easy / ARC-Challenge: splits, prompt format, and numeric answer keys mapped to letters."""

import pytest

from transformer_squared.tasks import get_task
from transformer_squared.tasks.arc import SYSTEM


@pytest.mark.parametrize("name, sizes", [
    ("arc-easy", {"train": 1126, "valid": 1125, "dev": 570, "test": 2376}),
    ("arc-challenge", {"train": 560, "valid": 559, "dev": 299, "test": 1172}),
])
@pytest.mark.slow  # reads every split: ~1 s for ARC-Easy on 2 shared cores
def test_split_sizes(shared_data, name, sizes):
    task = get_task(name)
    got = {s: len(task.load(s, shared_data)) for s in task.splits}
    assert got == sizes
    assert task.domain == "reasoning"


def test_prompt_format(shared_data):
    task = get_task("arc-easy")
    ex = task.load("test", shared_data)[0]
    msgs = task.messages(ex)
    assert msgs[0] == {"role": "system", "content": SYSTEM}
    assert msgs[1]["content"].startswith(ex.prompt + "\nOptions:\nA. ")
    assert "the answer is (X)" in SYSTEM


def test_numeric_answer_keys_score_correctly(shared_data):
    task = get_task("arc-challenge")
    examples = task.load("test", shared_data)
    numeric = [ex for ex in examples if ex.meta["labels"][0] == "1"]
    assert len(numeric) > 10
    for ex in numeric:
        letter = "ABCDE"[ex.meta["labels"].index(ex.meta["answer_key"])]
        assert ex.answer == letter
        assert task.score(ex, f"Let's think. The answer is ({letter}).").correct
        # options are shown with letters, so the prompt never shows the numeric labels
        assert "\nA. " in task.messages(ex)[1]["content"]


def test_reference_and_wrong_answers(shared_data):
    task = get_task("arc-easy")
    examples = task.load("test", shared_data)
    assert all(v.correct for v in task.score_many(examples, [task.sft_target(ex) for ex in examples]))
    ex = examples[0]
    wrong = next(c for c in "ABCD" if c != ex.answer)
    assert not task.score(ex, f"The answer is ({wrong}).").correct
    v = task.score(ex, "I don't know.")
    assert not v.correct and v.extracted is None     # no guess
    assert task.score(ex, f"I think the answer is ({ex.answer}).").correct


def test_five_choice_items_accept_e(shared_data):
    examples = [ex for ex in get_task("arc-easy").load("test", shared_data) if len(ex.meta["choices"]) == 5]
    assert examples
    assert get_task("arc-easy").score(examples[0], f"the answer is ({examples[0].answer})").correct


def test_plain_prompt_puts_the_options_inline(shared_data):
    ex = get_task("arc-easy").load("test", shared_data)[3]
    text = get_task("arc-easy").plain_prompt(ex)
    choices = ex.meta["choices"]
    assert text == f"{ex.prompt} {', '.join(choices[:-1])} or {choices[-1]}?"
    assert "Options:" not in text and "answer is" not in text
