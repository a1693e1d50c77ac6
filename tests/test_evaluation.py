"""t2 eval on the real embedded model with a small custom task: keys, determinism, resume, errors."""

import json

import pytest

from transformer_squared.cli.main import main
from transformer_squared.errors import T2Error
from transformer_squared.evaluation import EvalConfig, evaluate, select_examples
from transformer_squared.tasks import get_task

ROWS = [
    {"id": "capital", "prompt": "What is the capital of France? Answer with one word.", "answer": "Paris"},
    {"id": "sum", "prompt": "What is 2 + 3? Answer with the number only.", "answer": "5"},
    {"id": "color", "prompt": "What color is the sky on a clear day? Answer with one word.", "answer": "blue"},
]


@pytest.fixture
def qa(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def test_select_examples_is_seeded_and_keeps_order():
    items = list(range(100))

    class E:  # minimal stand-in for Example: select_examples only reorders
        def __init__(self, i):
            self.id = str(i)

    exs = [E(i) for i in items]
    a, b, c = select_examples(exs, 10, 0), select_examples(exs, 10, 0), select_examples(exs, 10, 1)
    assert [e.id for e in a] == [e.id for e in b] != [e.id for e in c]
    assert [int(e.id) for e in a] == sorted(int(e.id) for e in a)
    assert select_examples(exs, None, 0) == exs


def test_eval_json_keys_determinism_and_resume(capsys, qa, tmp_path, embedded):
    argv = ["eval", "--task", f"custom:{qa}", "--max-new-tokens", "12", "--json", "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    for key in ("task", "split", "n", "correct", "accuracy", "ci95", "seconds"):
        assert key in first
    assert first["n"] == 3
    records = [json.loads(x) for x in (tmp_path / "run" / "records.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["capital", "sum", "color"]
    assert "Paris" in records[0]["output"]  # SmolLM2 knows it (the exact scorer wants the bare word)
    assert first["correct"] == sum(r["correct"] for r in records)
    assert {"prompt", "output", "extracted", "correct"} <= set(records[0])

    # an interrupted run: only the first record survived; --resume generates the other two
    (tmp_path / "run" / "records.jsonl").write_text(json.dumps(records[0]) + "\n")
    assert main(argv + ["--resume"]) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["resumed"] == 1 and resumed["correct"] == first["correct"]
    assert main(argv) == 0  # same seed, fresh run: same result
    assert json.loads(capsys.readouterr().out)["correct"] == first["correct"]


def test_resume_refuses_another_configuration(qa, tmp_path, embedded):
    task = get_task(f"custom:{qa}")
    evaluate(embedded.model, embedded.tokenizer, EvalConfig(task="x", max_new_tokens=2, limit=1), task=task,
             out_dir=tmp_path, progress=False)
    with pytest.raises(T2Error, match="another configuration"):
        evaluate(embedded.model, embedded.tokenizer, EvalConfig(task="x", max_new_tokens=3, limit=1), task=task,
                 out_dir=tmp_path, resume=True, progress=False)


def test_bad_split_and_limit(capsys, qa, embedded):
    assert main(["eval", "--task", f"custom:{qa}", "--split", "nope"]) == 2
    assert "no split 'nope'" in capsys.readouterr().err
    with pytest.raises(T2Error, match="--limit"):
        EvalConfig(task="x", limit=0)
