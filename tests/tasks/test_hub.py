"""The hub code path, with a stand-in `datasets` module serving the local files in the hub's row format.

No network: this checks that hub rows are mapped to the same Examples (ids, answers, splits) as the files.
"""

import json
import sys
import types

import pytest

from transformer_squared.errors import T2Error
from transformer_squared.tasks import get_task


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def fake_hub(monkeypatch, shared_data):
    calls = []

    def load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        if name == "openai/gsm8k":
            return _jsonl(shared_data / "gsm8k" / f"{split}.jsonl")
        if name == "allenai/ai2_arc":
            sub = config.split("-")[1]
            part = {"train": "Train", "validation": "Dev", "test": "Test"}[split]
            rows = _jsonl(shared_data / "arc" / config / f"ARC-{sub}-{part}.jsonl")
            return [{"id": r["id"], "question": r["question"]["stem"], "answerKey": r["answerKey"],
                     "choices": {"text": [c["text"] for c in r["question"]["choices"]],
                                 "label": [c["label"] for c in r["question"]["choices"]]}} for r in rows]
        if name == "google-research-datasets/mbpp":
            lo, hi = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600), "train": (601, 974)}[split]
            rows = (json.loads((shared_data / "mbpp" / "sanitized-mbpp.json").read_text()) if config == "sanitized"
                    else _jsonl(shared_data / "mbpp" / "mbpp.jsonl"))
            return [r for r in rows if lo <= r["task_id"] <= hi]
        if name == "openai/openai_humaneval":
            return _jsonl(shared_data / "humaneval" / "HumanEval.jsonl")
        if name == "HuggingFaceH4/MATH-500":
            return _jsonl(shared_data / "math" / "math500_test.jsonl")
        raise ConnectionError(f"no route to the hub for {name}")

    monkeypatch.delenv("T2_DATA_DIR", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return calls


@pytest.mark.parametrize("name, split", [
    ("gsm8k", "valid"), ("arc-easy", "train"), ("arc-challenge", "dev"), ("mbpp", "test"),
    ("mbpp-sanitized", "valid"), ("humaneval", "test"), ("math500", "test"),
])
def test_hub_rows_give_the_same_examples(fake_hub, shared_data, name, split):
    task = get_task(name)
    from_hub = task.load(split)
    from_files = task.load(split, shared_data)
    assert [(e.id, e.answer, e.tests) for e in from_hub] == [(e.id, e.answer, e.tests) for e in from_files]
    assert fake_hub


def test_unreachable_hub_is_a_one_line_error(fake_hub):
    with pytest.raises(T2Error, match=r"could not load EleutherAI/hendrycks_math .* ConnectionError"):
        get_task("math").load("test")
