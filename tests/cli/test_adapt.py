"""t2 run / chat / adapt / eval --experts on a tiny saved chat model with random experts."""

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from tests.adaptation.conftest import DOMAINS
from transformer_squared.adaptation.labels import extract_label
from transformer_squared.cli.main import main


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("T2_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def qa(tmp_path):
    path = tmp_path / "qa.jsonl"
    rows = [{"id": f"q{i}", "prompt": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _common(model_dir, experts_dir):
    return ["--model", str(model_dir), "--experts", str(experts_dir)]


@pytest.mark.slow  # two passes over two prompts: over 1 s on 2 shared cores
def test_run_json_keys(capsys, tiny_model_dir, tiny_experts_dir):
    argv = ["run", *_common(tiny_model_dir, tiny_experts_dir), "--max-new-tokens", "3", "--pass1-tokens", "4",
            "--prefill", "--json", "What is 2+2?", "Write a python function."]
    assert main(argv) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2 and lines[0]["prompt"] == "What is 2+2?"
    for obj in lines:
        assert {"expert", "label", "answer", "pass1_seconds", "pass2_seconds"} <= set(obj)
        assert obj["pass2_seconds"] > 0 and obj["pass1"]["classification"].startswith("Classification: \\boxed{")
        # the label is what the classification names, and pass 2 used that domain's expert (the base for `others`)
        label = extract_label(obj["pass1"]["classification"], DOMAINS)
        assert obj["label"] == label and obj["expert"] == (label if label in DOMAINS else "base")


def test_run_human_output_and_errors(capsys, tiny_model_dir, tiny_experts_dir):
    assert main(["run", *_common(tiny_model_dir, tiny_experts_dir), "--max-new-tokens", "2", "--pass1-tokens", "2",
                 "Hello"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("[") and "pass 1" in out and "pass 2" in out
    assert main(["run", *_common(tiny_model_dir, tiny_experts_dir), "--strategy", "classifier", "Hi"]) == 2
    err = capsys.readouterr().err
    assert "needs a dispatch expert" in err and len(err.strip().splitlines()) == 1
    assert main(["run", "--model", str(tiny_model_dir), "--experts", "/nonexistent", "Hi"]) == 2
    assert "no such experts directory" in capsys.readouterr().err


@pytest.mark.slow  # a real `t2 chat` subprocess (interpreter, torch, model): 17-23 s on 2 shared cores
def test_chat_reads_lines_from_a_pipe(tiny_model_dir, tiny_experts_dir, tmp_path):
    env = {**os.environ, "T2_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "transformer_squared.cli.main", "chat", *_common(tiny_model_dir, tiny_experts_dir),
         "--max-new-tokens", "2", "--pass1-tokens", "2", "--show-timing"],
        input="What is 2+2?\n\n/reset\nWrite code\n/quit\nnever read\n", capture_output=True, text=True,
        env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    answers = [x for x in lines if x.startswith("[")]
    assert len(answers) == 2 and "(new conversation)" in lines
    assert sum("pass 1" in x for x in lines) == 2


@pytest.mark.slow  # two-pass evaluation: over 1 s on 2 shared cores
def test_eval_with_experts_reports_dispatch_and_timing(capsys, qa, tmp_path, tiny_model_dir, tiny_experts_dir):
    out = tmp_path / "run"
    argv = ["eval", "--task", f"custom:{qa}", *_common(tiny_model_dir, tiny_experts_dir), "--strategy", "prompt",
            "--prefill", "--pass1-tokens", "3", "--max-new-tokens", "3", "--json", "--out", str(out)]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    a = summary["adaptation"]
    assert summary["n"] == 5 and "ci95" in summary and a["strategy"] == "prompt"
    assert a["true_label"] == "others"  # a custom task's domain has no expert
    assert sum(sum(row.values()) for row in a["confusion"].values()) == 5
    assert sum(a["experts_used"].values()) == 5
    t = a["timing"]
    assert t["pass1_seconds"] > 0 and t["pass2_seconds"] > 0 and 0 < t["pass1_fraction"] < 1
    assert json.loads((out / "summary.json").read_text())["adaptation"] == a
    rows = [json.loads(x) for x in (out / "dispatch.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == [f"q{i}" for i in range(5)]
    # the dispatch accuracy is the share of the per-example rows whose chosen label is the true one
    assert a["dispatch_accuracy"] == sum(r["label"] == r["true"] for r in rows) / 5
    assert a["confusion"] == {"others": dict(Counter(r["label"] for r in rows))}
    # resume after losing the last record: one example generated again, confusion still over all five
    records = (out / "records.jsonl").read_text().splitlines()
    (out / "records.jsonl").write_text("\n".join(records[:4]) + "\n")
    assert main(argv + ["--resume"]) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["resumed"] == 4 and sum(resumed["adaptation"]["experts_used"].values()) == 5
    assert main(["eval", "--task", f"custom:{qa}", "--expert", str(tiny_experts_dir / "math"),
                 *_common(tiny_model_dir, tiny_experts_dir)]) == 2
    assert "not both" in capsys.readouterr().err


@pytest.mark.slow  # a CEM search and an evaluation: ~1.5 s
def test_adapt_fewshot_then_eval_excludes_the_shots(capsys, qa, tmp_path, tiny_model_dir, tiny_experts_dir):
    adapted = tmp_path / "adapted"
    argv = ["adapt", "--model", str(tiny_model_dir), "--experts", str(tiny_experts_dir), "--task", f"custom:{qa}",
            "--out", str(adapted), "--shots", "2", "--population", "2", "--iterations", "1", "--max-new-tokens", "2",
            "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["iterations"] == 1 and len(report["alpha"]) == 3 and report["heldout"] == 3
    assert (tmp_path / "adapted.cem.json").is_file()
    shots = json.loads((adapted / "expert.json").read_text())["fewshot"]["shot_ids"]
    assert main(["eval", "--task", f"custom:{qa}", "--model", str(tiny_model_dir), "--expert", str(adapted),
                 "--max-new-tokens", "2", "--json", "--out", str(tmp_path / "ev")]) == 0
    summary = json.loads(capsys.readouterr().out)
    ids = [json.loads(x)["id"] for x in (tmp_path / "ev" / "records.jsonl").read_text().splitlines()]
    assert summary["n"] == 3 and not set(ids) & set(shots)
    assert summary["config"]["excluded_shot_ids"] == sorted(shots)
    assert main(["eval", "--task", f"custom:{qa}", *_common(tiny_model_dir, tiny_experts_dir), "--strategy",
                 "fewshot", "--adapted", str(adapted), "--max-new-tokens", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == 3 and summary["adaptation"]["experts_used"] == {"adapted": 3}
    assert summary["config"]["excluded_shot_ids"] == sorted(shots)
    assert summary["adaptation"]["dispatch_accuracy"] is None


@pytest.mark.slow  # fits a router and evaluates: ~1.5 s
def test_adapt_router_and_eval_with_shuffled_experts(capsys, qa, tmp_path, tiny_model_dir, tiny_experts_dir,
                                                     shared_data):
    import shutil

    experts = tmp_path / "experts"
    shutil.copytree(tiny_experts_dir, experts)
    assert main(["adapt", "--router", "--model", str(tiny_model_dir), "--experts", str(experts), "--per-domain", "4",
                 "--data-dir", str(shared_data), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["domains"] == ["code", "math", "reasoning"] and (experts / "router.json").is_file()
    assert set(report["layer_report"]) == {"0", "1", "2"}
    assert main(["eval", "--task", f"custom:{qa}", *_common(tiny_model_dir, experts), "--strategy", "router",
                 "--shuffle-expert-seed", "3", "--max-new-tokens", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["config"]["shuffle_expert_seed"] == 3 and summary["adaptation"]["strategy"] == "router"
