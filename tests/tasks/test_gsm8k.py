"""GSM8K: splits, ids, prompt, and the reference answers scoring correct through the model-output path."""

import pytest

from transformer_squared.tasks import get_task
from transformer_squared.tasks.base import Example
from transformer_squared.tasks.gsm8k import SYSTEM


def test_splits_and_ids(shared_data):
    task = get_task("gsm8k")
    train, valid, test = (task.load(s, shared_data) for s in ("train", "valid", "test"))
    assert (len(train), len(valid), len(test)) == (3737, 3736, 1319)
    assert train[0].id == "gsm8k/train/0" and valid[0].id == "gsm8k/train/1" and test[-1].id == "gsm8k/test/1318"
    rows = [int(ex.id.rsplit("/", 1)[1]) for ex in train + valid]
    assert all(r % 2 == 0 for r in rows[:3737]) and all(r % 2 == 1 for r in rows[3737:])
    assert len(set(rows)) == 7473
    assert task.load(None, shared_data) == test       # default split


def test_prompt_is_the_papers(shared_data):
    task = get_task("gsm8k")
    ex = task.load("test", shared_data)[0]
    assert task.messages(ex) == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ex.prompt}]
    assert task.domain == "math" and task.max_new_tokens == 512


@pytest.mark.slow  # scores every reference answer: ~1 s on 2 shared cores
def test_reference_answers_score_correct(shared_data):
    task = get_task("gsm8k")
    for split in ("test", "valid"):
        examples = task.load(split, shared_data)
        verdicts = task.score_many(examples, [task.sft_target(ex) for ex in examples])
        assert all(v.correct for v in verdicts)
    assert "<<" not in task.sft_target(examples[0])     # calculator annotations are stripped for training


def test_wrong_and_tricky_outputs(shared_data):
    task = get_task("gsm8k")
    ex = task.load("test", shared_data)[0]          # Janet's ducks: 18
    assert ex.answer == "18"
    assert task.score(ex, "She makes $18.00 every day.").correct
    assert task.score(ex, "The answer is 18 dollars, from 16 - 3 - 4 = 9 eggs at $2.").correct
    assert not task.score(ex, "She makes $-18 every day.").correct
    assert not task.score(ex, "She makes 19 dollars.").correct
    v = task.score(ex, "I cannot tell.")
    assert not v.correct and v.extracted is None
    assert task.reward(ex, "#### 18") == 1.0 and task.reward(ex, "#### 17") == -1.0


@pytest.mark.parametrize("answer, output, correct", [
    ("145", "The answer is 143 + 2 = 145.", True),       # an equation after "answer is" is read to its result
    ("143", "The answer is 143 + 2 = 145.", False),      # the mirror case used to pass
    ("2880000", "The answer is 2879999.", False),        # integers compare exactly (a 1e-6 tolerance said equal)
    ("2880000", "The answer is 2,880,000.", True),
    ("18", "The answer is 36/2.", True),
    ("210", "#### $210", True),
    ("23", "####23", True),
    ("6", "Each costs $6.00.", True),
    ("5", "So x = 5.0", True),
    ("18", "The answer is 20.\nWait, I made a mistake: 9 * 2 = 18.", True),    # a final correction wins
    ("20", "The answer is 20. Wait, is it 18? Let me check: 4 * 5 = 20.", True),  # one not final does not
])
def test_extracted_answers(answer, output, correct):
    task = get_task("gsm8k")
    assert task.score(Example(id="gsm8k/test/x", prompt="", answer=answer), output).correct is correct
