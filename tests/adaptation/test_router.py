"""The prefill router: fits, separates clearly different prompt sets, thresholds to others, saves and loads."""

import pytest
import torch

from transformer_squared.adaptation.labels import OTHERS
from transformer_squared.adaptation.model import SelfAdaptiveModel
from transformer_squared.adaptation.router import Router, RouterConfig, RouterStrategy, embed, fit_router
from transformer_squared.errors import T2Error

MATH = [f"What is {a} plus {b} times {a + b}? Compute {a * b} minus {b}." for a, b in
        [(3, 4), (12, 7), (5, 9), (21, 2), (8, 8), (13, 6), (40, 1), (7, 30)]]
CODE = [f"def {n}(xs):\n    return [x for x in xs if x % {k} == 0]\n# write a python function {n}" for n, k in
        [("evens", 2), ("odds", 3), ("f", 5), ("keep", 7), ("sel", 4), ("pick", 6), ("div", 9), ("g", 11)]]
QA = [f"Which of these {w} is most likely found in a forest? Options: A. tree B. car C. {w} D. lamp" for w in
      ["animals", "plants", "objects", "birds", "insects", "rocks", "tools", "flowers"]]


def test_router_separates_clearly_different_prompt_sets(chat_runtime):
    am = chat_runtime.am
    texts = {"math": MATH[:6], "code": CODE[:6], "reasoning": QA[:6]}
    router = fit_router(am.model, am.tokenizer, texts, RouterConfig(per_domain=6, threshold_quantile=0.0))
    assert router.domains == ["code", "math", "reasoning"]
    report = router.meta["layer_report"]
    assert set(report) == {"0", "1", "2"}  # embeddings + 2 layers, each measured
    assert router.meta["holdout_accuracy"] == max(r["accuracy"] for r in report.values())
    feats = embed(am.model, am.tokenizer, MATH[6:] + CODE[6:] + QA[6:], layers=[router.layer])[:, 0]
    labels, sims = router.predict(feats)
    assert labels == ["math"] * 2 + ["code"] * 2 + ["reasoning"] * 2, sims
    strategy = RouterStrategy(chat_runtime, router)
    choices = strategy.choose([[{"role": "user", "content": CODE[7]}], [{"role": "user", "content": MATH[7]}]])
    assert [c.name for c in choices] == ["code", "math"] and "similarities" in choices[0].detail


def test_threshold_sends_far_prompts_to_others_and_round_trips(tmp_path):
    router = Router(["code", "math"], torch.eye(2, 3), torch.zeros(3), layer=1, threshold=0.5,
                    meta={"fingerprint": "abc"})
    feats = torch.tensor([[1.0, 0.1, 0.0], [0.0, 1.0, 0.0], [0.1, 0.1, 1.0]])
    labels, sims = router.predict(feats)
    assert labels == ["code", "math", OTHERS] and sims.shape == (3, 2)
    router.save(tmp_path)
    back = Router.load(tmp_path)
    assert back.domains == router.domains and back.layer == 1 and back.threshold == 0.5
    assert back.predict(feats)[0] == labels and back.meta["fingerprint"] == "abc"


@pytest.mark.slow  # fits a router: over 1 s on 2 shared cores
def test_router_strategy_fits_on_first_use_and_caches_beside_the_experts(tmp_path, chat_am, shared_data,
                                                                         smol_tokenizer):
    from .conftest import random_experts, tiny_chat_lm

    for d, e in random_experts(chat_am).items():
        e.save(tmp_path / d)
    config = RouterConfig(per_domain=4)
    sam = SelfAdaptiveModel.from_dir(tmp_path, model=tiny_chat_lm(smol_tokenizer), strategy="router",
                                     data_dir=shared_data, router_config=config)
    meta = (tmp_path / "router.json").read_text()
    assert chat_am.fingerprint in meta and (tmp_path / "router.safetensors").is_file()
    first = sam.strategy.router
    again = SelfAdaptiveModel.from_dir(tmp_path, model=tiny_chat_lm(smol_tokenizer), strategy="router",
                                       data_dir=shared_data, router_config=config).strategy.router
    assert torch.equal(first.centroids, again.centroids) and again.meta["fit_seconds"] == first.meta["fit_seconds"]
    results = sam.generate(["What is 2 + 2?"], _params())
    # the answer used the expert the fitted router picks for this prompt (its own nearest centroid)
    chosen = sam.strategy.choose([[{"role": "user", "content": "What is 2 + 2?"}]])[0]
    assert (results[0].expert, results[0].label) == (chosen.name, chosen.label) and results[0].pass1_seconds > 0


def _params():
    from transformer_squared.generation import SamplingParams

    return SamplingParams(max_new_tokens=2)


def test_router_config_checks_the_prompt_form():
    assert RouterConfig().form == "mixed"
    with pytest.raises(T2Error, match="router form must be one of"):
        RouterConfig(form="casual")
