"""GSM8K: splits, ids, prompt, and the reference answers scoring correct through the model-output path."""

from transformer_squared.tasks import get_task
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
