"""The server on the real embedded model (SmolLM2-135M-Instruct) with the real prompt strategy for "auto": the
answer comes from the expert the response names, streamed or not, alone or batched with other experts."""

from __future__ import annotations

import threading

import pytest

from transformer_squared.adaptation.model import SelfAdaptiveModel, make_strategy
from transformer_squared.adaptation.expert_set import ExpertSet
from transformer_squared.adaptation.prompt import PromptConfig
from transformer_squared.adaptation.runtime import Runtime
from transformer_squared.adapted import AdaptedModel
from transformer_squared.generation import SamplingParams

from .conftest import live_server, save_random_experts

pytestmark = pytest.mark.slow
pytest.importorskip("openai")
pytest.importorskip("fastapi")
QUESTION = [{"role": "user", "content": "What is 12 plus 30?"}]


@pytest.fixture(scope="module")
def smol_sam(embedded, tmp_path_factory):
    am = AdaptedModel.prepare(embedded, progress=False)
    root = tmp_path_factory.mktemp("smol-experts")
    save_random_experts(am, root, 0.1)
    rt = Runtime.build(am, ExpertSet.load(root, am), batch_size=8, cache_bytes=0)
    yield SelfAdaptiveModel(rt, make_strategy("prompt", rt, prompt_config=PromptConfig(max_new_tokens=8)))
    am.svf.detach()  # the session-wide model goes back unwrapped


def test_embedded_model_serves_experts(smol_sam):
    rt = smol_sam.rt
    with live_server(smol_sam, max_tokens=16, batch_wait_ms=300) as server:
        c = server.client(timeout=300)
        out = {}

        def stream_math():  # streamed, expert by name
            out["math"] = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
                model="math", messages=QUESTION, temperature=0, max_tokens=6, stream=True) if ch.choices)

        def code():
            out["code"] = c.chat.completions.create(model="code", messages=QUESTION, temperature=0, max_tokens=6)

        def auto():  # pass 1 with the real prompt strategy
            out["auto"] = c.chat.completions.with_raw_response.create(model="auto", messages=QUESTION,
                                                                      temperature=0, max_tokens=6)

        threads = [threading.Thread(target=f) for f in (stream_math, code, auto)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        answer = out["auto"].parse()
        assert out["auto"].headers["x-t2-expert"] == answer.expert
        assert out["code"].expert == "code" and out["code"].choices[0].message.content
    # math and code arrived together: one batch, per-row experts
    assert any(b["mode"] == "rows" and {"math", "code"} <= set(b["experts"]) for b in server.scheduler.batch_log)
    with rt.am.using(rt.experts.experts["math"]):  # the reference: merged W', the plain engine
        assert rt.engine.generate_chat([QUESTION], SamplingParams(max_new_tokens=6))[0].text == out["math"]
    # "auto" answered with the expert the prompt strategy picks for this question outside the server
    assert answer.expert == smol_sam.strategy.choose([QUESTION])[0].name
