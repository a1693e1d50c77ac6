"""serving/decode.py: per-row decoding equals the engine's, per-row limits/stops/seeds, streaming, cancellation,
and per-row experts following the rows through compaction."""

from __future__ import annotations

import pytest

from transformer_squared.generation import SamplingParams, chat_prompt_ids
from transformer_squared.serving.decode import Row, _held_back, decode

PROMPTS = ["Hi", "What is 17 times 23? Think step by step.", "Write a haiku about the sea, please.", "ok"]


@pytest.fixture(scope="module")
def rt(sam):
    return sam.rt


def ids(rt, text):
    return chat_prompt_ids(rt.tokenizer, [{"role": "user", "content": text}])


def run(rt, prompts, params, **kw):
    rows = [Row(ids(rt, p), params if isinstance(params, SamplingParams) else params[i], **kw)
            for i, p in enumerate(prompts)]
    decode(rt.engine, rows)
    return rows


def test_greedy_equals_engine(rt):
    rt.cache.activate(None)
    params = SamplingParams(max_new_tokens=12)
    rows = run(rt, PROMPTS, params)
    ref = rt.engine.generate([ids(rt, p) for p in PROMPTS], params)
    assert [r.token_ids for r in rows] == [o.token_ids for o in ref]
    assert [r.text for r in rows] == [o.text for o in ref]
    assert [r.finish_reason for r in rows] == [o.finish_reason for o in ref]


def test_per_row_max_tokens_and_stop(rt):
    rt.cache.activate(None)
    full = run(rt, PROMPTS[:2], SamplingParams(max_new_tokens=16))
    stop = full[1].text[5:9]  # a piece of what the model will say
    assert stop.strip()
    rows = run(rt, PROMPTS[:2], [SamplingParams(max_new_tokens=3), SamplingParams(max_new_tokens=16, stop=(stop,))])
    assert rows[0].token_ids == full[0].token_ids[:3] and rows[0].finish_reason == "length"
    assert rows[1].finish_reason == "stop" and stop not in rows[1].text
    assert full[1].text.startswith(rows[1].text) and len(rows[1].text) == full[1].text.index(stop)
    ref = rt.engine.generate([ids(rt, PROMPTS[1])], SamplingParams(max_new_tokens=16, stop=(stop,)))[0]
    assert rows[1].text == ref.text


def test_streamed_pieces_add_up_and_hold_back_stops(rt):
    rt.cache.activate(None)
    full = run(rt, PROMPTS[1:2], SamplingParams(max_new_tokens=16))[0]
    stop = full.text[6:10]
    pieces = []
    row = Row(ids(rt, PROMPTS[1]), SamplingParams(max_new_tokens=16, stop=(stop,)), on_text=pieces.append)
    decode(rt.engine, [row])
    assert "".join(pieces) == row.text and len(pieces) > 1
    assert all(stop not in "".join(pieces[: i + 1]) for i in range(len(pieces)))
    assert _held_back("abc\ufffd", ()) == 1 and _held_back("the sto", ("stop",)) == 3 and _held_back("x", ("y",)) == 0


def test_cancelled_row_is_dropped_and_the_others_are_unchanged(rt):
    rt.cache.activate(None)
    params = SamplingParams(max_new_tokens=20)
    alone = run(rt, PROMPTS[:3], params)
    done = []
    rows = [Row(ids(rt, p), params, on_done=done.append) for p in PROMPTS[:3]]
    rows[1].cancelled = lambda: len(rows[1].token_ids) >= 4
    stats = decode(rt.engine, rows)
    assert rows[1].finish_reason == "cancelled" and len(rows[1].token_ids) == 4
    assert rows[0].token_ids == alone[0].token_ids and rows[2].token_ids == alone[2].token_ids
    assert done[0] is rows[1] and len(done) == 3  # reported the moment it stopped
    assert stats.new_tokens == sum(len(r.token_ids) for r in rows)


def test_per_row_experts_follow_the_rows(rt):
    """Rows with different experts and lengths (so rows are dropped mid-batch) == each alone, merged."""
    experts = [rt.experts.experts["math"], None, rt.experts.experts["code"], rt.experts.experts["math"]]
    params = [SamplingParams(max_new_tokens=n) for n in (5, 16, 9, 16)]
    alone = []
    for p, e, sp in zip(PROMPTS, experts, params):
        rt.cache.activate(e)
        alone.append(run(rt, [p], sp)[0].token_ids)
    rt.cache.activate(None)
    svf = rt.am.svf
    svf.set_rows([None if e is None else e.z for e in experts])
    try:
        rows = [Row(ids(rt, p), sp) for p, sp in zip(PROMPTS, params)]
        decode(rt.engine, rows, on_reindex=svf.select_rows)
    finally:
        rt.cache.activate(None)
    assert [r.token_ids for r in rows] == alone
    assert alone[0] != run(rt, PROMPTS[:1], params[0])[0].token_ids  # the experts do change the output


def test_seeded_row_is_independent_of_its_batch(rt):
    rt.cache.activate(None)
    seeded = SamplingParams(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=7)
    alone = run(rt, PROMPTS[1:2], seeded)[0].token_ids
    mixed = run(rt, PROMPTS[:3], [SamplingParams(max_new_tokens=10, temperature=0.8), seeded,
                                  SamplingParams(max_new_tokens=4)])
    assert mixed[1].token_ids == alone
    assert run(rt, PROMPTS[1:2], SamplingParams(max_new_tokens=10, temperature=1.0, seed=8))[0].token_ids != alone
