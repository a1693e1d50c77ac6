"""`t2 score`: in-process through cli.main.main, and once as the installed `t2` command in a subprocess."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from transformer_squared.cli.main import main
from transformer_squared.tasks import get_task
from transformer_squared.tasks.runner import score_predictions


@pytest.fixture(scope="module")
def data(shared_data):
    return shared_data


def _predictions(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def gsm8k_preds(tmp_path, data):
    examples = get_task("gsm8k").load("test", data)[:4]
    rows = [{"id": ex.id, "output": f"The answer is {ex.answer}."} for ex in examples[:3]]
    rows.append({"id": examples[3].id, "output": "No idea."})
    return _predictions(tmp_path / "preds.jsonl", rows)


def test_json_summary_and_records(gsm8k_preds, tmp_path, data, capsys):
    out = tmp_path / "records.jsonl"
    code = main(["score", "--task", "gsm8k", "--predictions", str(gsm8k_preds), "--data-dir", str(data),
                 "--out", str(out), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert {k: summary[k] for k in ("task", "split", "n", "correct", "accuracy", "n_split")} == \
        {"task": "gsm8k", "split": "test", "n": 4, "correct": 3, "accuracy": 0.75, "n_split": 1319}
    # Wilson's 95% interval for 3 of 4, from its formula: p = 0.75, z = 1.96
    z, n, p = 1.959964, 4, 0.75
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert summary["ci95"] == pytest.approx([(centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)],
                                            abs=1e-4)
    assert isinstance(summary["seconds"], float)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["correct"] for r in records] == [True, True, True, False]
    assert set(records[0]) == {"id", "output", "extracted", "correct", "detail"}
    assert records[3]["extracted"] is None


def test_human_summary(gsm8k_preds, data, capsys):
    assert main(["score", "--task", "gsm8k", "--predictions", str(gsm8k_preds), "--data-dir", str(data)]) == 0
    text = capsys.readouterr().out
    assert "gsm8k [test]: 75.00% (3/4, 95% CI" in text and "scored 4 of the split's 1319 examples" in text


@pytest.mark.parametrize("rows, message", [
    ([{"id": "gsm8k/test/0", "output": "1"}, "{oops"], "preds.jsonl:2: not valid JSON"),
    ([{"id": "gsm8k/test/99999", "output": "1"}], "preds.jsonl:1: id 'gsm8k/test/99999' is not in gsm8k split 'test'"),
    ([{"id": "gsm8k/test/0", "output": "1"}, {"id": "gsm8k/test/0", "output": "2"}],
     "preds.jsonl:2: duplicate id 'gsm8k/test/0' (first at"),
    ([{"id": "gsm8k/test/0"}], "preds.jsonl:1: missing or invalid 'output'"),
    ([{"output": "x"}], "preds.jsonl:1: missing or invalid 'id'"),
])
def test_bad_predictions_are_one_line_errors(tmp_path, data, capsys, rows, message):
    preds = _predictions(tmp_path / "preds.jsonl", rows)
    assert main(["score", "--task", "gsm8k", "--predictions", str(preds), "--data-dir", str(data)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_unknown_task_and_split(tmp_path, data, capsys):
    preds = _predictions(tmp_path / "p.jsonl", [{"id": "x", "output": "y"}])
    assert main(["score", "--task", "nope", "--predictions", str(preds), "--data-dir", str(data)]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err
    assert main(["score", "--task", "humaneval", "--split", "train", "--predictions", str(preds),
                 "--data-dir", str(data)]) == 2
    assert "has no split 'train'" in capsys.readouterr().err


@pytest.mark.slow  # sandboxed programs (processes)
def test_library_function_scores_code_in_parallel(data):
    examples = get_task("humaneval").load("test", data)[:3]
    preds = [{"id": ex.id, "output": ex.solution} for ex in examples]
    preds[1]["output"] = "```python\nimport os\nos._exit(0)\n```"
    summary, records = score_predictions("humaneval", None, preds, data_dir=data, workers=2)
    assert (summary["n"], summary["correct"]) == (3, 2)
    assert [r["correct"] for r in records] == [True, False, True]


@pytest.mark.slow  # the installed `t2` in a subprocess
def test_installed_command_in_a_subprocess(tmp_path, data):
    task_file = _predictions(tmp_path / "task.jsonl", [{"id": "q1", "prompt": "2+2?", "answer": 4},
                                                       {"id": "q2", "prompt": "3*3?", "answer": 9}])
    preds = _predictions(tmp_path / "preds.jsonl", [{"id": "q1", "output": "It is 4."},
                                                    {"id": "q2", "output": "It is 6."}])
    t2 = Path(sys.executable).with_name("t2")
    cmd = [str(t2)] if t2.exists() else [sys.executable, "-m", "transformer_squared.cli.main"]
    proc = subprocess.run(cmd + ["score", "--task", f"custom:{task_file}", "--predictions", str(preds), "--json"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "T2_DATA_DIR": str(data)})
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert (summary["n"], summary["correct"], summary["accuracy"]) == (2, 1, 0.5)
    bad = subprocess.run(cmd + ["score", "--task", "gsm8k", "--predictions", str(tmp_path / "missing.jsonl")],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "T2_DATA_DIR": str(data)})
    assert bad.returncode == 2 and "no such predictions file" in bad.stderr and "Traceback" not in bad.stderr
