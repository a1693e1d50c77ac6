"""generation/batch.py: the running batch. Rows that join mid-batch, leave early, stop, stream, are cancelled
or carry per-row state decode as each would alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.generation.test_engine import CharTokenizer, random_prompts, reference
from transformer_squared.errors import T2Error
from transformer_squared.generation import Engine, SamplingParams
from transformer_squared.testing import tiny_model


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # outputs, not speed (see tests/generation/test_engine.py)
    yield
    torch.set_num_threads(before)


def run(engine, schedule, **batch_kw):
    """Drive a batch: `schedule` maps a step number to the (prompt, params, kw) added before that step.
    Returns the rows in the order added and the batch's finished lists per step."""
    rows, finished = [], []
    with engine.batch(**batch_kw) as batch:
        step = 0
        while batch or any(s >= step for s in schedule):
            for prompt, params, kw in schedule.get(step, []):
                rows.append(batch.add(prompt, params, **kw))
            finished.append(batch.step())
            step += 1
    return rows, finished


def alone(engine, prompt, params, **kw):
    return run(engine, {0: [(prompt, params, kw)]})[0][0]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_rows_joining_a_running_batch_decode_as_alone(arch):
    """Newcomers shorter and longer than the running rows (the cache is re-laid out for a longer one), each
    with its own max_new_tokens, equal `model.generate` on each prompt alone."""
    model = tiny_model(arch)
    engine = Engine(model, None, runner="fast", max_batch_size=4)
    prompts = random_prompts([6, 3, 21, 9, 2, 12, 30], seed=1)
    limits = [12, 5, 9, 14, 3, 10, 8]
    schedule = {0: [0, 1], 3: [2], 4: [3], 6: [4, 5], 9: [6]}
    rows, finished = run(engine, {s: [(prompts[i], SamplingParams(max_new_tokens=limits[i]), {}) for i in idx]
                                  for s, idx in schedule.items()})
    assert [r.token_ids for r in rows] == [reference(model, p, n) for p, n in zip(prompts, limits)]
    assert sorted(id(r) for f in finished for r in f) == sorted(id(r) for r in rows)  # each reported once
    for r in rows:
        assert r.finish_reason == ("stop" if r.token_ids[-1] in engine.eos else "length")


@pytest.mark.slow  # over 1 s on 2 shared cores
def test_a_long_stream_of_joins_keeps_the_cache_bounded():
    """One row joins every step for 30 steps: outputs equal each alone, and the cache's length stays near the
    longest prompt plus the steps left (re-laid out now and then), not the number of steps run."""
    model = tiny_model("llama")
    engine = Engine(model, None, max_batch_size=8)
    engine.eos = set()
    prompts = random_prompts([3 + (7 * i) % 11 for i in range(30)], seed=2)
    params = SamplingParams(max_new_tokens=6)
    slots = []
    rows = []
    with engine.batch() as batch:
        for i in range(40):
            if i < len(prompts):
                rows.append(batch.add(prompts[i], params))
            batch.step()
            slots.append(batch._runner.kv.shape[4] if batch._runner.kv is not None else 0)
    assert not batch and len(rows) == 30
    assert [r.token_ids for r in rows] == [alone(engine, p, params).token_ids for p in prompts]
    assert max(slots) <= 2 * (13 + 6) + 6  # span + room, with room for later joins: never the 40 steps run


def test_cancel_finishes_a_row_and_leaves_the_others_unchanged():
    model = tiny_model("llama")
    engine = Engine(model, None)
    engine.eos = set()
    prompts = random_prompts([5, 8, 4])
    params = SamplingParams(max_new_tokens=12)
    with engine.batch() as batch:
        rows = [batch.add(p, params) for p in prompts]
        for _ in range(3):
            batch.step()
        batch.cancel(rows[1])
        assert rows[1] in batch.step() and rows[1].finish_reason == "cancelled"
        assert len(rows[1].token_ids) == 3 and batch._runner.n == 2  # it left the cache at once
        queued = batch.add(prompts[0], params)
        batch.cancel(queued)  # cancelled before it joined: never prefilled
        assert queued in batch.step() and queued.token_ids == []
        while batch:
            batch.step()
    for i in (0, 2):
        assert rows[i].token_ids == alone(engine, prompts[i], params).token_ids


def test_stop_strings_and_streamed_text_per_row():
    model = tiny_model("llama")
    tok = CharTokenizer()
    engine = Engine(model, tok)
    engine.eos = set()
    prompts = random_prompts([6, 3, 10])
    base = [alone(engine, p, SamplingParams(max_new_tokens=20)) for p in prompts]
    stop = base[1].text[6:8]
    pieces: list[str] = []
    schedule = {0: [(prompts[0], SamplingParams(max_new_tokens=20), {})],
                2: [(prompts[1], SamplingParams(max_new_tokens=20, stop=(stop, "unseen")), {"on_text": pieces.append})],
                4: [(prompts[2], SamplingParams(max_new_tokens=7), {})]}
    rows, _ = run(engine, schedule)
    cut = base[1].text.find(stop)
    assert rows[1].finish_reason == "stop" and rows[1].text == base[1].text[:cut]
    assert rows[1].token_ids == base[1].token_ids[: cut + len(stop)]
    assert "".join(pieces) == rows[1].text and len(pieces) > 1
    assert all(stop not in "".join(pieces[: i + 1]) for i in range(len(pieces)))
    assert rows[0].token_ids == base[0].token_ids and rows[2].token_ids == base[2].token_ids[:7]
    # The same stop through Engine.generate: the same text and ids.
    out = engine.generate([prompts[1]], SamplingParams(max_new_tokens=20, stop=(stop,)))[0]
    assert (out.text, out.token_ids, out.finish_reason) == (rows[1].text, rows[1].token_ids, "stop")


def test_a_seeded_row_samples_the_same_whatever_shares_its_batch():
    model = tiny_model("llama")
    engine = Engine(model, None)
    engine.eos = set()
    prompts = random_prompts([5, 8, 3])
    seeded = SamplingParams(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=7)
    lone = alone(engine, prompts[1], seeded).token_ids
    rows, _ = run(engine, {0: [(prompts[0], SamplingParams(max_new_tokens=10, temperature=0.8), {}),
                               (prompts[2], SamplingParams(max_new_tokens=10, temperature=1.0, seed=3), {})],
                           2: [(prompts[1], seeded, {})]})
    assert rows[2].token_ids == lone
    assert alone(engine, prompts[1], SamplingParams(max_new_tokens=10, temperature=1.0, seed=8)).token_ids != lone


class RowShift(nn.Module):
    """A projection plus a per-row vector picked by each row's state, like per-row SVF experts; fails if its
    row state does not match the rows it is called on."""

    def __init__(self, base: nn.Module, n: int, width: int):
        super().__init__()
        self.base = base
        self.shift = torch.randn(n, width, generator=torch.Generator().manual_seed(0)) * 2.0
        self.rows: torch.Tensor | None = None

    def forward(self, x):
        assert x.shape[0] == len(self.rows), "per-row state out of step with the batch"
        return self.base(x) + self.shift[self.rows][:, None, :]


def test_per_row_state_follows_rows_that_join_and_leave():
    model = tiny_model("llama")
    mlp = model.model.layers[0].mlp
    prompts = random_prompts([5, 9, 3, 7, 12, 4])
    shift = RowShift(mlp.down_proj, len(prompts), model.config.hidden_size)
    mlp.down_proj = shift
    limits = [4, 12, 6, 12, 9, 3]
    refs = []
    for i, p in enumerate(prompts):
        shift.rows = torch.tensor([i])
        refs.append(reference(model, p, limits[i]))
    calls = []

    def on_rows(states):
        calls.append(("rows", list(states)))
        shift.rows = torch.tensor(states)

    def on_reindex(keep):
        calls.append(("keep", keep.tolist()))
        shift.rows = shift.rows[keep]

    engine = Engine(model, None)
    schedule = {0: [0, 1, 2], 2: [3], 5: [4, 5]}
    rows, _ = run(engine, {s: [(prompts[i], SamplingParams(max_new_tokens=limits[i]), {"state": i}) for i in idx]
                           for s, idx in schedule.items()}, on_rows=on_rows, on_reindex=on_reindex)
    assert [r.token_ids for r in rows] == refs
    assert ("rows", [3]) in calls and ("rows", [4, 5]) in calls  # newcomers prefilled with their own state
    assert any(c[0] == "keep" for c in calls)


def test_the_hf_runner_starts_newcomers_when_the_batch_is_empty():
    model = tiny_model("gpt2")
    engine = Engine(model, None)
    prompts = random_prompts([4, 7, 5])
    params = SamplingParams(max_new_tokens=5)
    with engine.batch() as batch:
        first = [batch.add(p, params) for p in prompts[:2]]
        batch.step()
        late = batch.add(prompts[2], params)
        batch.step()
        assert late.token_ids == [] and batch.pending == [late]  # waits: the HF cache cannot take rows
        while batch:
            batch.step()
    assert [r.token_ids for r in first + [late]] == [reference(model, p, 5) for p in prompts]


def test_misuse_is_a_one_line_error():
    engine = Engine(tiny_model("llama"), None)
    batch = engine.batch()
    batch.add([3, 4], SamplingParams(max_new_tokens=2))
    with pytest.raises(T2Error, match="with engine.batch"):
        batch.step()
    with pytest.raises(T2Error, match="need a tokenizer"):
        batch.add([3, 4], SamplingParams(max_new_tokens=2), on_text=print)
    with pytest.raises(T2Error, match="empty prompt"):
        batch.add([], SamplingParams())
