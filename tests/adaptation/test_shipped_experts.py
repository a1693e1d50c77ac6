"""The expert set shipped in experts/ fits the embedded model, and its router and dispatch expert route prompts."""

from pathlib import Path

import pytest

from transformer_squared.adaptation.expert_set import ExpertSet
from transformer_squared.adaptation.model import SelfAdaptiveModel, make_strategy
from transformer_squared.adaptation.router import Router
from transformer_squared.adaptation.runtime import Runtime
from transformer_squared.adapted import AdaptedModel
from transformer_squared.generation import SamplingParams
from transformer_squared.tasks import get_task

SHIPPED = Path(__file__).resolve().parents[2] / "experts"

pytestmark = pytest.mark.skipif(not (SHIPPED / "reasoning" / "expert.json").is_file(), reason="no shipped experts")


@pytest.fixture(scope="module")
def runtime(embedded):
    am = AdaptedModel.prepare(embedded, "mlp", progress=False)
    try:
        yield Runtime.build(am, ExpertSet.load(SHIPPED, am), batch_size=4)
    finally:
        am.svf.detach()


def test_every_shipped_expert_was_trained_for_this_model(runtime):
    experts = runtime.experts
    assert experts.domains == ["code", "math", "reasoning"] and experts.dispatch is not None
    assert experts.tasks == {"code": "mbpp", "math": "gsm8k", "reasoning": "arc-easy"}
    for domain in experts.domains:  # the training record travels with the expert
        meta = experts.experts[domain].meta
        assert meta["training"]["config"]["task"] == experts.tasks[domain] and meta["metrics"]["test"]["n"] > 0
    router = Router.load(SHIPPED, "router")
    assert router.meta["fingerprint"] == runtime.am.fingerprint and router.domains == experts.domains


@pytest.mark.parametrize("strategy", ["router", "classifier"])
def test_shipped_pass_one_routes_held_out_prompts_to_their_expert(runtime, strategy, shared_data):
    """Two test-split prompts per domain task (never seen by the router or the dispatch expert) go to that domain."""
    conversations, want = [], []
    for domain, task_name in runtime.experts.tasks.items():
        task = get_task(task_name)
        for example in task.load("test", shared_data)[:2]:
            conversations.append(task.messages(example))
            want.append(domain)
    sam = SelfAdaptiveModel(runtime, make_strategy(strategy, runtime))
    results = sam.generate(conversations, SamplingParams(max_new_tokens=2))
    assert [r.expert for r in results] == want
