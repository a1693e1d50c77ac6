"""A run stopped after a checkpoint and resumed ends exactly where an uninterrupted run ends."""

import json

import pytest
import torch
from safetensors.torch import load_file

from transformer_squared.errors import T2Error
from transformer_squared.experts import Expert
from transformer_squared.training import TrainConfig, train

from .tinylm import tiny_lm, write_task

# Each test trains tiny models several times: 1.5-6 s each on 2 shared cores.
pytestmark = pytest.mark.slow

RECIPES = {
    # sampled rollouts with the leave-one-out baseline and a KL term: every RNG and all the state matter
    # (trained steps only: a step-0 win would ship z = 1 from both runs, and equal z = 1 proves nothing)
    "svf-rl": dict(method="svf", objective="rl", temperature=1.0, samples_per_prompt=2, kl_coef=0.1, lr=0.05,
                   select_base=False),
    # dropout in the adapter: the torch RNG state must survive the restart
    "lora-sft": dict(method="lora", objective="sft", lr=0.01),
}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("T2_CACHE", str(tmp_path / "cache"))


def run(tmp_path, name, out, **kw):
    task = write_task(tmp_path)
    config = TrainConfig(out=str(tmp_path / out), task=f"custom:{task}", steps=4, batch_size=4, eval_every=2,
                         valid_limit=3, test_limit=2, max_new_tokens=6, micro_batch_tokens=40, progress=False,
                         **{**RECIPES[name], **kw})
    return train(config, model=tiny_lm())


def rows(result):
    return [{k: v for k, v in r.items() if k != "seconds"}
            for r in map(json.loads, (result.out / "metrics.jsonl").read_text().splitlines())]


def trained_tensors(result, method):
    if method == "svf":
        return Expert.load(result.expert).z
    return load_file(str(result.expert / "adapter_model.safetensors"))


@pytest.mark.parametrize("name", list(RECIPES))
def test_stopped_and_resumed_run_equals_uninterrupted_run(tmp_path, name):
    whole = run(tmp_path, name, "whole")
    stopped = run(tmp_path, name, "resumed", stop_after=3)  # checkpoint at step 2, then one more step
    assert stopped.interrupted and stopped.expert is None and stopped.steps == 3
    first = [0] if RECIPES[name].get("select_base", True) else []  # step 0: the base model's validation
    assert [r["step"] for r in rows(stopped)] == first + [1, 2, 3]
    resumed = run(tmp_path, name, "resumed", resume=True)
    assert not resumed.interrupted and resumed.steps == 4

    got, want = rows(resumed), rows(whole)
    assert [r["step"] for r in got] == first + [1, 2, 3, 4]  # step 3 was not logged twice
    for g, w in zip(got, want):
        assert g.keys() == w.keys() and g.pop("answers", None) == w.pop("answers", None)  # the same samples
        assert g == pytest.approx(w, rel=1e-5, abs=1e-6)
    assert resumed.valid == whole.valid and resumed.best_step == whole.best_step
    a, b = trained_tensors(whole, RECIPES[name]["method"]), trained_tensors(resumed, RECIPES[name]["method"])
    assert set(a) == set(b)
    moved = max((t - (1 if name == "svf-rl" else 0)).abs().max().item() for t in a.values())
    assert moved > 1e-4, "training changed nothing, so equality would prove nothing"
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=1e-5)
    if name == "lora-sft":
        meta = json.loads((resumed.expert / "t2-lora.json").read_text())
        assert meta["base_model"]["fingerprint"] and meta["lora"]["rank"] == 16 and meta["training"]["steps"] == 4


def test_refuses_to_mix_runs_or_change_the_recipe_on_resume(tmp_path):
    run(tmp_path, "svf-rl", "out", stop_after=2)
    with pytest.raises(T2Error, match="already holds a training run"):
        run(tmp_path, "svf-rl", "out")
    with pytest.raises(T2Error, match="kl_coef"):
        run(tmp_path, "svf-rl", "out", resume=True, kl_coef=0.3)
