"""Few-shot adaptation end to end on a tiny chat model: shots, fitness, saved expert, held-out evaluation."""

import json

import pytest
import torch

from transformer_squared.adaptation.cem import CEMConfig
from transformer_squared.adaptation.fewshot import (FewShotConfig, FewShotStrategy, adapt_fewshot, draw_shots,
                                                    heldout_task, mean_token_loglik)
from transformer_squared.errors import T2Error
from transformer_squared.experts import Expert
from transformer_squared.generation import Engine, SamplingParams, chat_prompt_ids
from transformer_squared.tasks import Verdict, get_task


@pytest.fixture
def parity_task(tmp_path):
    """A custom task whose 'correct' depends on the output's characters, so different α score differently."""
    path = tmp_path / "toy.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Say something about {w}.", "answer": "x"}) + "\n"
                            for i, w in enumerate(["cats", "dogs", "rain", "tea", "maps", "salt", "ink", "sand"])))
    task = get_task(f"custom:{path}", max_new_tokens=5)
    task.score = lambda ex, out: Verdict(sum(map(ord, out)) % 2 == 0, out)
    return task


@pytest.mark.slow  # a CEM search: over 1 s on 2 shared cores
def test_adapt_saves_a_mixed_expert_that_reproduces_its_fitness(chat_runtime, parity_task, tmp_path):
    config = FewShotConfig(shots=4, seed=1, cem=CEMConfig(population=4, iterations=2, seed=0))
    expert, result = adapt_fewshot(chat_runtime, parity_task, config, checkpoint=tmp_path / "cem.json")
    info = expert.meta["fewshot"]
    shots = draw_shots(parity_task.load(), 4, 1)
    assert info["shot_ids"] == [ex.id for ex in shots] and info["heldout"] == 4
    assert expert.meta["role"] == "fewshot" and expert.meta["mixed_from"] == ["code", "math", "reasoning"]
    assert len(expert.meta["alpha"]) == 3 and abs(sum(expert.meta["alpha"]) - 1) < 1e-5
    assert len(info["curve"]) == 2 and info["fitness"]["score"] == result.fitness.score
    assert all(m.mode == "base" for m in chat_runtime.am.svf.layers.values())
    # the saved expert, merged from scratch, scores what the search saw through the cached mix
    expert.save(tmp_path / "adapted")
    loaded = Expert.load(tmp_path / "adapted")
    am = chat_runtime.am
    ids = [chat_prompt_ids(am.tokenizer, parity_task.messages(ex)) for ex in shots]
    with am.svf.merged(loaded.z):
        outs = Engine(am.model, am.tokenizer, max_batch_size=4).generate(ids, SamplingParams(max_new_tokens=5))
    acc = sum(parity_task.score(ex, o.text).correct for ex, o in zip(shots, outs)) / 4
    assert acc == result.fitness.score
    # inference: every prompt uses it
    choices = FewShotStrategy(chat_runtime, loaded).choose([[{"role": "user", "content": "hi"}]] * 2)
    assert [c.expert for c in choices] == [loaded, loaded] and choices[0].alpha == loaded.meta["alpha"]


def test_per_layer_alpha_shape(chat_runtime, parity_task):
    config = FewShotConfig(shots=2, cem=CEMConfig(population=2, iterations=1, per_layer=True))
    expert, result = adapt_fewshot(chat_runtime, parity_task, config)
    M = len(chat_runtime.experts.experts["math"].z)
    assert tuple(result.alpha.shape) == (3, M)
    assert torch.allclose(result.alpha.sum(0), torch.ones(M), atol=1e-5)
    alpha = torch.tensor(expert.meta["alpha"])
    assert tuple(alpha.shape) == (3, M)


def test_heldout_excludes_the_shots_only_for_their_task(parity_task):
    shots = draw_shots(parity_task.load(), 3, 0)
    expert = Expert({}, {"fewshot": {"task": parity_task.name, "shot_ids": [ex.id for ex in shots]}})
    held = heldout_task(parity_task, expert)
    ids = [ex.id for ex in held.load()]
    assert len(ids) == 5 and not set(ids) & {ex.id for ex in shots}
    assert held.name == parity_task.name and held.domain == parity_task.domain
    assert heldout_task(get_task("gsm8k"), expert).name == "gsm8k"  # another task: nothing excluded
    assert heldout_task(parity_task, Expert({}, {})) is parity_task
    with pytest.raises(T2Error, match="needs more than --shots"):
        draw_shots(parity_task.load(), 8, 0)


@torch.no_grad()
def test_mean_token_loglik_matches_a_direct_computation(tiny_am):
    model = tiny_am.model
    prompt, completion = [5, 6, 7], [9, 10, 11, 12]
    logits = model(torch.tensor([prompt + completion])).logits[0]
    logp = torch.log_softmax(logits.float(), -1)
    want = sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(completion)) / len(completion)
    got = mean_token_loglik(model, [prompt, [1, 2]], [completion, []])
    assert got[0] == pytest.approx(want, abs=1e-5) and got[1] == float("-inf")


def test_fitness_scores_what_t2_eval_scores_the_reply_after_the_response_prefix(chat_runtime, parity_task):
    """A task that prefills the reply (as code tasks do with ```python): the search must see the prefilled prompt
    and score prefix + generated text, as evaluation does, or its shots' accuracy means something else."""
    from transformer_squared.adaptation.fewshot import ShotFitness
    from transformer_squared.evaluation import EvalConfig, evaluate
    from transformer_squared.tasks import prompt_ids

    parity_task.response_prefix = lambda ex: "Sure:"
    parity_task.score = lambda ex, out: Verdict(out.startswith("Sure:"), out)
    shots = draw_shots(parity_task.load(), 4, 1)
    experts = [chat_runtime.experts.experts[d] for d in chat_runtime.experts.domains]
    fitness = ShotFitness(chat_runtime, experts, parity_task, shots, SamplingParams(max_new_tokens=3))
    assert fitness.ids == [prompt_ids(parity_task, chat_runtime.tokenizer, ex) for ex in shots]
    try:
        assert fitness(torch.tensor([1.0, 0.0, 0.0])).score == 1.0
    finally:
        chat_runtime.cache.activate(None)
    summary, _ = evaluate(chat_runtime.model, chat_runtime.tokenizer, EvalConfig(task="toy", max_new_tokens=3),
                          task=parity_task, progress=False)
    assert summary["accuracy"] == 1.0
