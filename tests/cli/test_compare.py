"""`t2 compare`: two `t2 eval --out` directories paired by item id (metrics.compare_runs), and its refusals."""

import json
import shutil

import pytest

from transformer_squared.cli.main import main
from transformer_squared.errors import T2Error
from transformer_squared.evaluation import EvalConfig, evaluate
from transformer_squared.metrics import compare_runs
from transformer_squared.tasks import get_task

from tests.training.tinylm import tiny_lm, write_task


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A real `t2 eval --out` directory (the evaluation writer's own format) of the tiny model on a tiny task."""
    tmp = tmp_path_factory.mktemp("compare")
    task = get_task("custom", path=write_task(tmp), scorer="exact", system="", max_new_tokens=4)
    lm = tiny_lm()
    evaluate(lm.model, lm.tokenizer, EvalConfig(task="custom", split="train", max_new_tokens=4), task=task,
             out_dir=tmp / "a", progress=False)
    return tmp / "a"


def variant(src, dst, flip=(), drop=(), config=None):
    """A copy of a run with some items' verdicts flipped / dropped, or its config changed (summary kept coherent)."""
    shutil.copytree(src, dst)
    records = [json.loads(line) for line in (dst / "records.jsonl").read_text().splitlines()]
    records = [r for i, r in enumerate(records) if i not in drop]
    for i in flip:
        records[i]["correct"] = not records[i]["correct"]
    (dst / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = json.loads((dst / "summary.json").read_text())
    summary["n"], summary["correct"] = len(records), sum(r["correct"] for r in records)
    summary["config"].update(config or {})
    (dst / "summary.json").write_text(json.dumps(summary))
    return dst


def test_identical_runs_differ_by_nothing(base_run):
    r = compare_runs(base_run, base_run)
    n = len((base_run / "records.jsonl").read_text().splitlines())
    assert r["n"] == n > 10 and r["difference"] == 0 and r["mcnemar_p"] == 1.0
    assert r["table"]["only_a"] == r["table"]["only_b"] == 0
    lo, hi = r["difference_ci95"]
    assert lo < 0 < hi


def test_pairs_items_by_id_and_reports_the_paired_statistics(base_run, tmp_path, capsys):
    records = [json.loads(line) for line in (base_run / "records.jsonl").read_text().splitlines()]
    wrong = [i for i, r in enumerate(records) if not r["correct"]]
    assert len(wrong) >= 8, "the tiny model must get most items wrong for this test to mean something"
    better = variant(base_run, tmp_path / "b", flip=wrong[:8])  # B right on 8 items A got wrong
    # B's records in another order: pairing is by id, not by line
    lines = (better / "records.jsonl").read_text().splitlines()
    (better / "records.jsonl").write_text("\n".join(reversed(lines)) + "\n")

    assert main(["compare", str(base_run), str(better), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["table"]["only_b"] == 8 and r["table"]["only_a"] == 0
    assert r["n"] == len(records) and r["difference"] == pytest.approx(8 / len(records))
    assert r["mcnemar_p"] == pytest.approx(2 / 2 ** 8)  # all 8 discordant pairs favour B
    assert r["difference_ci95"][0] > 0  # the interval excludes 0, as the test rejects
    assert "Newcombe" in r["ci_method"]

    assert main(["compare", str(base_run), str(better)]) == 0
    text = capsys.readouterr().out
    assert f"{800 / len(records):+.2f} points" in text and "McNemar p = 0.0078" in text


@pytest.mark.parametrize("change, match", [
    (dict(drop=[0]), "different items"),
    (dict(config={"max_new_tokens": 64}), "different generation budgets"),
])
def test_refuses_runs_that_are_not_comparable(base_run, tmp_path, capsys, change, match):
    other = variant(base_run, tmp_path / "b", **change)
    with pytest.raises(T2Error, match=match):
        compare_runs(base_run, other)
    assert main(["compare", str(base_run), str(other)]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1


def test_refuses_other_tasks_unfinished_runs_and_missing_directories(base_run, tmp_path):
    other = variant(base_run, tmp_path / "task", config={})
    summary = json.loads((other / "summary.json").read_text())
    summary["task"] = "gsm8k"
    (other / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(T2Error, match="different tasks"):
        compare_runs(base_run, other)
    unfinished = variant(base_run, tmp_path / "unfinished")
    (unfinished / "summary.json").unlink()
    with pytest.raises(T2Error, match="did not finish.*--resume"):
        compare_runs(base_run, unfinished)
    with pytest.raises(T2Error, match="no such directory"):
        compare_runs(base_run, tmp_path / "nowhere")
