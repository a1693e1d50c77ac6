"""examples/trl_grpo_svf.py end to end on the tiny chat model: TRL's GRPOTrainer trains an SVF adapter, the run
writes a t2 expert, and `t2 expert show` and `t2 eval --expert` accept it like one from `t2 train`."""

import importlib.util
import json
from pathlib import Path

import pytest

from transformer_squared.cli.main import main
from transformer_squared.experts import Expert

pytest.importorskip("trl")

# A GRPO training run through TRL: ~45 s on 2 shared cores.
pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "trl_grpo_svf.py"
ROWS = [{"id": "a", "prompt": "What is 2 + 3?", "answer": "5"}, {"id": "b", "prompt": "What is 4 * 2?", "answer": "8"},
        {"id": "c", "prompt": "What is 9 - 7?", "answer": "2"}, {"id": "d", "prompt": "What is 6 / 3?", "answer": "2"}]


def load_example():
    spec = importlib.util.spec_from_file_location("trl_grpo_svf", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_grpo_trains_an_svf_expert_that_t2_evaluates(tmp_path, monkeypatch, capsys, tiny_model_dir):
    task_file = tmp_path / "arith.jsonl"
    task_file.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    example = load_example()
    # The tiny random model never answers right: every task reward is -1, GRPO's advantages are all 0 and z cannot
    # move. A reward that prefers short replies gives the group a spread, so the test sees the adapter train.
    rewarded = []

    def length_reward(completions, example_id, **_):
        rewarded.extend(example_id)
        return [-float(len(c[-1]["content"])) for c in completions]

    monkeypatch.setattr(example, "task_reward_func", lambda task, examples: length_reward)
    out = tmp_path / "run"
    argv = ["--tiny", "--task", f"custom:{task_file}", "--steps", "2", "--batch-size", "2", "--num-generations", "2",
            "--max-completion-length", "8", "--out", str(out)]
    assert example.cli(argv) == 0
    assert set(rewarded) <= {"a", "b", "c", "d"} and rewarded

    expert = Expert.load(out / "expert")
    assert expert.num_parameters == 288 and expert.stats()["max_abs_dev"] > 0  # trained: z moved off 1
    assert expert.meta["task"] == f"custom:{task_file}" and "GRPOTrainer" in expert.meta["training"]["via"]
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "log_history.json").is_file()

    capsys.readouterr()
    assert main(["expert", "show", str(out / "expert"), "--json", "--png", "none"]) == 0
    assert json.loads(capsys.readouterr().out)["parameters"] == 288
    assert main(["eval", "--model", str(tiny_model_dir), "--task", f"custom:{task_file}", "--expert",
                 str(out / "expert"), "--limit", "2", "--max-new-tokens", "4", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == 2 and summary["config"]["expert_name"] == expert.name


def test_a_user_error_is_one_line(tmp_path, capsys):
    code = load_example().cli(["--tiny", "--task", "nope", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("trl_grpo_svf: error: unknown task") and "\n" not in err
