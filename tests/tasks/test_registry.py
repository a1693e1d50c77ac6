"""The task registry and data loading: names, options, and one-line errors for missing or malformed data."""

import shutil
import sys

import pytest

from transformer_squared.errors import T2Error
from transformer_squared.tasks import Example, Task, Verdict, get_task, list_tasks

NAMES = ["gsm8k", "math", "math500", "arc-easy", "arc-challenge", "mbpp", "mbpp-sanitized", "humaneval"]
# The domain of each task (SPEC §3): the expert trained on it, or the one an unseen task should be routed to.
DOMAIN = {"gsm8k": "math", "math": "math", "math500": "math", "arc-easy": "reasoning", "arc-challenge": "reasoning",
          "mbpp": "code", "mbpp-sanitized": "code", "humaneval": "code"}


def test_list_and_get():
    assert list_tasks() == NAMES
    for name in NAMES:
        task = get_task(name)
        assert isinstance(task, Task) and task.name == name
        assert task.domain == DOMAIN[name]
        assert task.default_split in task.splits and task.max_new_tokens >= 512
    assert Example and Verdict


def test_unknown_name_and_option():
    with pytest.raises(T2Error, match="unknown task 'gsm9k'; choose from gsm8k, math"):
        get_task("gsm9k")
    with pytest.raises(T2Error, match="does not take option"):
        get_task("gsm8k", timeout=3)
    assert get_task("humaneval", timeout=3).timeout == 3.0


def test_unknown_split(shared_data):
    with pytest.raises(T2Error, match="has no split 'dev'; choose from train, valid, test"):
        get_task("gsm8k").load("dev", shared_data)


@pytest.mark.slow  # reads every split of every task: ~2 s
def test_ids_are_unique_and_stable(shared_data):
    for name in NAMES:
        task = get_task(name)
        ids = [ex.id for split in task.splits for ex in task.load(split, shared_data)]
        assert len(ids) == len(set(ids)), name
        assert [ex.id for ex in task.load(None, shared_data)] == [ex.id for ex in task.load(None, shared_data)]


@pytest.fixture
def data_copy(tmp_path, shared_data):
    """A writable copy of the GSM8K and HumanEval files."""
    for sub in ("gsm8k", "humaneval"):
        shutil.copytree(shared_data / sub, tmp_path / sub)
        for f in (tmp_path / sub).iterdir():
            f.chmod(0o644)
    return tmp_path


def test_malformed_line_names_file_and_line(data_copy):
    path = data_copy / "gsm8k" / "test.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2] + ['{"question": "broken"'] + lines[3:]) + "\n")
    with pytest.raises(T2Error, match=rf"{path}:3: not valid JSON"):
        get_task("gsm8k").load("test", data_copy)


def test_missing_field_names_file_and_line(data_copy):
    path = data_copy / "humaneval" / "HumanEval.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:4] + ['{"task_id": "HumanEval/x", "prompt": "def f():"}'] + lines[5:]) + "\n")
    with pytest.raises(T2Error, match=rf"{path}:5: missing field 'canonical_solution'"):
        get_task("humaneval").load("test", data_copy)


def test_gsm8k_answer_without_final_number(data_copy):
    path = data_copy / "gsm8k" / "test.jsonl"
    path.write_text('{"question": "q", "answer": "no marker here"}\n')
    with pytest.raises(T2Error, match=rf"{path}:1: answer has no '#### <number>' line"):
        get_task("gsm8k").load("test", data_copy)


def test_missing_directory_or_file_says_what_to_pass(tmp_path):
    with pytest.raises(T2Error, match="does not exist; pass --data-dir"):
        get_task("gsm8k").load("test", tmp_path / "nowhere")
    with pytest.raises(T2Error, match=r"no such data file \(expected math/math500_test.jsonl .*T2_DATA_DIR"):
        get_task("math500").load("test", tmp_path)


def test_data_dir_from_environment(monkeypatch, shared_data):
    monkeypatch.setenv("T2_DATA_DIR", str(shared_data))
    assert len(get_task("humaneval").load()) == 164


def test_hub_fallback_without_datasets_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("T2_DATA_DIR", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", None)    # makes `import datasets` fail: no network used
    with pytest.raises(T2Error, match="`datasets` package is not installed; pass --data-dir"):
        get_task("arc-easy").load("test")
