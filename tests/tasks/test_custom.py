"""Custom JSONL tasks: naming, scorer inference, validation errors that name the line, and each scorer."""

import json

import pytest

from transformer_squared.errors import T2Error
from transformer_squared.tasks import get_task
from transformer_squared.tasks.custom import ANSWER_SYSTEM


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_numeric_task_by_both_names(tmp_path):
    f = _write(tmp_path / "sums.jsonl", [
        {"id": "a", "prompt": "What is 2 + 2?", "answer": 4},
        {"id": "b", "prompt": "What is 1 - 3?", "answer": "-2", "split": "train"},
    ])
    for task in (get_task(f"custom:{f}"), get_task("custom", path=str(f))):
        assert task.scorer == "numeric" and task.splits == ("test", "train") and task.default_split == "test"
        (a,) = task.load()
        assert a.id == "a" and task.score(a, "2 + 2 = 4").correct and not task.score(a, "5").correct
        (b,) = task.load("train")
        assert task.score(b, "The answer is -2.").correct
        assert task.messages(a) == [{"role": "system", "content": ANSWER_SYSTEM},
                                    {"role": "user", "content": "What is 2 + 2?"}]
    assert get_task(f"custom:{f}").name == f"custom:{f}"


def test_exact_scorer_and_default_ids(tmp_path):
    f = _write(tmp_path / "caps.jsonl", [{"prompt": "Capital of France?", "answer": "Paris"}])
    task = get_task(f"custom:{f}", system="")
    (ex,) = task.load()
    assert task.scorer == "exact" and ex.id == f"custom:{f}/1"
    assert task.messages(ex) == [{"role": "user", "content": "Capital of France?"}]
    assert task.score(ex, "It is \\boxed{paris}").correct
    assert task.score(ex, "The answer is: **Paris**.").correct
    assert task.score(ex, "Let me think.\nParis").correct
    assert not task.score(ex, "The answer is Lyon.").correct


def test_choice_scorer_maps_text_answers_to_letters(tmp_path):
    f = _write(tmp_path / "mc.jsonl", [
        {"prompt": "Which is a fruit?", "choices": ["carrot", "apple", "leek"], "answer": "apple"},
        {"prompt": "Which is red?", "choices": ["sky", "blood"], "answer": "b"},
    ])
    task = get_task(f"custom:{f}")
    a, b = task.load()
    assert task.scorer == "choice" and a.answer == "B" and b.answer == "B"
    assert "Options:\nA. carrot\nB. apple\nC. leek\n" in task.messages(a)[1]["content"]
    assert task.plain_prompt(a) == "Which is a fruit? carrot, apple or leek?"  # options inline, as typed
    assert task.score(a, "I think the answer is (B).").correct
    assert not task.score(a, "I think so.").correct


@pytest.mark.slow  # a sandboxed program (a process)
def test_python_scorer_runs_tests_in_the_sandbox(tmp_path):
    f = _write(tmp_path / "code.jsonl", [
        {"id": 1, "prompt": "Write add(a, b).", "tests": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]},
        {"id": 2, "prompt": "Write neg(x).", "tests": "assert neg(2) == -2"},
    ])
    task = get_task(f"custom:{f}", timeout=20)
    assert task.scorer == "python" and task.domain == "custom"
    a, b = task.load()
    outputs = ["```python\ndef add(a, b):\n    return a + b\n```", "```python\ndef neg(x):\n    return x\n```"]
    verdicts = task.score_many([a, b], outputs, workers=2)
    assert [v.correct for v in verdicts] == [True, False]
    assert not task.score(a, "```python\nimport os\nos._exit(0)\n```").correct


@pytest.mark.parametrize("rows, scorer, message", [
    (['{"prompt": "x", "answer": 1}', "{not json"], None, ":2: not valid JSON"),
    ([{"answer": 1}], None, ":1: 'prompt' must be a non-empty string"),
    ([{"prompt": "x", "id": "a", "answer": "1"}, {"prompt": "y", "id": "a", "answer": "2"}], None,
     ":2: duplicate id 'a' (first on line 1)"),
    ([{"prompt": "x", "answer": "one"}], "numeric", ":1: answer 'one' is not a number"),
    ([{"prompt": "x"}], "exact", ":1: scorer 'exact' needs an 'answer'"),
    ([{"prompt": "x", "answer": "1"}], "python", ":1: scorer 'python' needs 'tests'"),
    ([{"prompt": "x", "choices": ["a", "b"], "answer": "c"}], None, ":1: answer 'c' is neither a choice letter"),
    ([{"prompt": "x", "choices": ["a"], "answer": "a"}], None, ":1: 'choices' must be a list of 2 to"),
    ([{"prompt": "x", "answer": True}], None, ":1: 'answer' must be a string or a number"),
    ([{"prompt": "x", "tests": []}], None, ":1: 'tests' must be a string or a non-empty list"),
    ([{"prompt": "x", "answer": "1", "split": ""}], None, ":1: 'split' must be a non-empty string"),
    ([{"prompt": "x", "answer": "1"}], "fuzzy", "unknown scorer 'fuzzy'"),
    ([], None, "no rows"),
])
def test_validation_errors_name_the_line(tmp_path, rows, scorer, message):
    f = _write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(T2Error) as e:
        get_task(f"custom:{f}", **({"scorer": scorer} if scorer else {}))
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_file_and_unknown_split(tmp_path):
    with pytest.raises(T2Error, match="no such file"):
        get_task(f"custom:{tmp_path / 'nope.jsonl'}")
    with pytest.raises(T2Error, match="custom:<path.jsonl>"):
        get_task("custom")
    f = _write(tmp_path / "t.jsonl", [{"prompt": "x", "answer": "1"}])
    with pytest.raises(T2Error, match="has no split 'train'; choose from test"):
        get_task(f"custom:{f}").load("train")
    with pytest.raises(T2Error, match="either custom:<path> or path="):
        get_task(f"custom:{f}", path=str(f))
