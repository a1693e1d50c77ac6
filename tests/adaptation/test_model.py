"""SelfAdaptiveModel's two passes on a tiny model: grouping, base restored for 'others', timings."""

import pytest
import torch

from transformer_squared.adaptation.expert_set import ExpertSet
from transformer_squared.adaptation.model import SelfAdaptiveModel
from transformer_squared.adaptation.runtime import Runtime
from transformer_squared.adaptation.strategy import Choice
from transformer_squared.generation import Engine, SamplingParams

from .conftest import random_experts

PROMPTS = [[5, 6, 7], [9, 3], [11, 12, 13, 14], [2, 8, 8], [20, 21], [30, 31, 32]]
LABELS = ["math", "others", "code", "math", "others", "reasoning"]
PARAMS = SamplingParams(max_new_tokens=6)


class Fixed:
    """A strategy that returns preset labels (mechanics only)."""

    name = "fixed"

    def __init__(self, rt, labels):
        self.rt, self.labels = rt, labels

    def choose(self, conversations):
        return [self.rt.experts.choice(lab) for lab in self.labels[:len(conversations)]]


def _sam(am, labels, batch_size=4):
    rt = Runtime.build(am, ExpertSet.from_experts(random_experts(am)), batch_size=batch_size)
    return SelfAdaptiveModel(rt, Fixed(rt, labels))


def test_grouped_cached_pass_two_equals_merging_each_prompt_from_scratch(tiny_am):
    sam = _sam(tiny_am, LABELS)
    choices = [sam.rt.experts.choice(lab) for lab in LABELS]
    outs, seconds, totals = sam.answer(PROMPTS, choices, PARAMS)
    assert totals["groups"] == 4 and all(s > 0 for s in seconds)
    engine = Engine(tiny_am.model, None, max_batch_size=1)
    for p, c, o in zip(PROMPTS, choices, outs):
        with tiny_am.svf.merged(None if c.expert is None else c.expert.z):
            want = engine.generate([p], PARAMS)[0]
        assert o.token_ids == want.token_ids, c.name
    again, _, _ = sam.answer(PROMPTS, choices, PARAMS)  # second round: all switches are cache hits
    assert [o.token_ids for o in again] == [o.token_ids for o in outs]
    assert sam.rt.cache.stats["merges"] == 3 and sam.rt.cache.stats["hits"] >= 3
    distinct = {tuple(o.token_ids) for o in outs}
    assert len(distinct) > 2  # the experts really change the outputs


@torch.no_grad()
def test_others_answers_with_the_base_weights_not_the_last_expert(tiny_am):
    ids = torch.tensor([[5, 6, 7, 8]])
    base_logits = tiny_am.model(ids).logits
    base_out = Engine(tiny_am.model, None).generate([PROMPTS[1]], PARAMS)[0]
    sam = _sam(tiny_am, ["math", "others"])
    outs, _, _ = sam.answer([PROMPTS[0], PROMPTS[1]], [sam.rt.experts.choice("math"),
                                                       sam.rt.experts.choice("others")], PARAMS)
    assert outs[1].token_ids == base_out.token_ids
    sam.rt.cache.activate(sam.rt.experts.experts["code"])  # an expert loaded last...
    outs, _, _ = sam.answer([PROMPTS[1]], [Choice.base()], PARAMS)  # ...is not reused for "others"
    assert outs[0].token_ids == base_out.token_ids
    assert torch.equal(tiny_am.model(ids).logits, base_logits)  # and the base is back afterwards


def test_generate_reports_choice_and_timings(chat_runtime):
    sam = SelfAdaptiveModel(chat_runtime, Fixed(chat_runtime, ["math", "others", "code"]))
    results = sam.generate(["What is 2+2?", [{"role": "user", "content": "Hi"}], "Write code"],
                           SamplingParams(max_new_tokens=3))
    assert [r.expert for r in results] == ["math", "base", "code"]
    assert [r.label for r in results] == ["math", "others", "code"]
    for r in results:
        # pass 1 ran once for the batch: each prompt carries an equal share of it
        assert r.pass1_seconds == pytest.approx(sam.last_timing["pass1_seconds"] / 3)
        assert r.pass2_seconds > 0 and isinstance(r.answer, str)
        assert set(r.to_json()) >= {"expert", "answer", "pass1_seconds", "pass2_seconds"}
    assert sam.last_timing["prompts"] == 3 and sam.last_timing["groups"] == 3


def test_bad_prompts_and_strategies_are_one_line_errors(chat_runtime):
    from transformer_squared.adaptation.model import make_strategy
    from transformer_squared.errors import T2Error

    sam = SelfAdaptiveModel(chat_runtime, Fixed(chat_runtime, []))
    with pytest.raises(T2Error, match="a prompt is a string"):
        sam.generate([[("user", "x")]], PARAMS)
    with pytest.raises(T2Error, match="needs a dispatch expert"):
        make_strategy("classifier", chat_runtime)
    with pytest.raises(T2Error, match="needs the adapted expert"):
        make_strategy("fewshot", chat_runtime)
    with pytest.raises(T2Error, match="unknown strategy"):
        make_strategy("oracle", chat_runtime)
