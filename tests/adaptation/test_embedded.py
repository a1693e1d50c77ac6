"""End to end on the real embedded model (SmolLM2-135M-Instruct), tiny budgets: the router separates the
experts' tasks, and two-pass generation leaves the base model bit-exact behind it."""

import pytest
import torch

from transformer_squared.adaptation.expert_set import ExpertSet
from transformer_squared.adaptation.model import SelfAdaptiveModel
from transformer_squared.adaptation.router import RouterConfig, RouterStrategy, embed, fit_router, training_texts
from transformer_squared.adaptation.runtime import Runtime
from transformer_squared.adaptation.strategy import user_text
from transformer_squared.adapted import AdaptedModel
from transformer_squared.experts import Expert
from transformer_squared.generation import SamplingParams
from transformer_squared.tasks import get_task

pytestmark = pytest.mark.slow
TASKS = {"math": "gsm8k", "code": "mbpp", "reasoning": "arc-easy"}


@pytest.fixture(scope="module")
def smol(embedded):
    am = AdaptedModel.prepare(embedded, progress=False)
    yield am
    am.svf.detach()  # the session-wide model goes back unwrapped


def test_router_separates_the_experts_tasks_and_others_restores_the_base(smol, shared_data):
    am = smol
    texts = training_texts(TASKS, 4, 0, shared_data)
    config = RouterConfig(per_domain=4, layer=30, threshold_quantile=0.0, max_tokens=48)  # 48 tokens suffice
    router = fit_router(am.model, am.tokenizer, texts, config)
    prompts, truth = [], []
    for domain, name in TASKS.items():
        task = get_task(name)
        for ex in task.load("test", shared_data)[:2]:
            prompts.append(task.messages(ex))
            truth.append(domain)
    feats = embed(am.model, am.tokenizer, [user_text(p) for p in prompts], layers=[router.layer], max_tokens=48)[:, 0]
    labels, _ = router.predict(feats)
    assert sum(a == b for a, b in zip(labels, truth)) >= 5, list(zip(labels, truth))  # of 6 test prompts

    ids = torch.tensor([am.tokenizer("The capital of France is")["input_ids"]])
    with torch.no_grad():
        base = am.model(ids).logits
    # one expert only (a merge of SmolLM2's 90 MLP matrices takes seconds): math prompts go to it, the rest to base
    math = Expert.random(am.shapes(), 0.05, seed=0, meta=am.expert_meta(domain="math"))
    rt = Runtime.build(am, ExpertSet.from_experts({"math": math}), batch_size=4)
    strategy = RouterStrategy(rt, router)  # code prompts: no code expert loaded, so the base answers
    sam = SelfAdaptiveModel(rt, strategy)
    short = [user_text(prompts[i])[:160] for i in (0, 2)]  # a GSM8K and an MBPP question, cut: prefill is slow here
    results = sam.generate(short, SamplingParams(max_new_tokens=2))
    assert [r.expert for r in results] == ["math", "base"]
    assert results[0].pass1_seconds > 0 and results[0].pass2_seconds > 0
    with torch.no_grad():
        assert torch.equal(am.model(ids).logits, base)
