"""`t2 train` end to end on the real embedded model (SmolLM2-135M-Instruct) and ARC-Easy."""

import json

import pytest

from tests.training.conftest import one_thread  # noqa: F401 (autouse: training runs on one thread)
from transformer_squared.cli.main import main
from transformer_squared.experts import Expert


@pytest.mark.slow
def test_smoke_run_writes_an_expert_that_loads(tmp_path, capsys, embedded, shared_data):
    out = tmp_path / "run"
    argv = ["train", "--model", "smollm2-135m-instruct", "--task", "arc-easy", "--method", "svf",
            "--objective", "rl", "--steps", "2", "--batch-size", "2", "--max-new-tokens", "16", "--out", str(out),
            "--data-dir", str(shared_data), "--no-progress", "--json",
            # validate and test on a few examples (a run shorter than --eval-every skips both)
            "--eval-every", "2", "--valid-limit", "2", "--test-limit", "2"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]  # step 0: the base model's validation
    assert {"loss", "reward", "accuracy", "grad_norm", "lr", "seconds", "tokens", "valid_accuracy", "no_answer",
            "z_drift"} <= set(rows[2])
    assert rows[0]["z_drift"] == 0 and rows[2]["z_drift"] > 0
    for f in ("curves.png", "expert/z.png", "checkpoint/state.pt", "checkpoint/config.json"):
        assert (out / f).stat().st_size > 0, f

    expert = Expert.load(out / "expert")
    meta = expert.meta
    # the base model competes for the best validation step: a step-0 win ships z = 1, and the record says so
    moved = expert.stats()["max_abs_dev"] > 0
    assert expert.num_parameters == 51_840 and moved == (meta["metrics"]["selected_step"] != 0)
    assert meta["metrics"]["beats_base"] == moved and meta["metrics"]["base_valid"]["step"] == 0
    assert meta["task"] == "arc-easy" and meta["domain"] == "reasoning" and meta["base_model"]["fingerprint"]
    assert meta["training"]["config"]["lr"] == 2e-3 and meta["library_version"]
    metrics = meta["metrics"]
    assert [v["step"] for v in metrics["valid"]] == [0, 2] and metrics["selected_step"] == result["best_step"]
    assert metrics["test"]["n"] == 2 and len(metrics["test"]["ci95"]) == 2

    # the same directory again: a one-line error, not a second run mixed into the first
    assert main(argv) == 2
    assert "--resume" in capsys.readouterr().err
