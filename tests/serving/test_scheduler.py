"""serving/scheduler.py without HTTP: requests join a running batch between steps, with their own experts and
limits, and each answers as it would alone; streaming sends only new text; a running request can be cancelled."""

from __future__ import annotations

import threading

import pytest

from transformer_squared.generation import SamplingParams, chat_prompt_ids
from transformer_squared.serving import ServeConfig
from transformer_squared.serving.jobs import Failed, Finished, Job, Started, TextDelta
from transformer_squared.serving.scheduler import Scheduler


class Client:
    """A job's events, collected; `hold` (an Event) blocks the worker at this job's first text delta."""

    def __init__(self, sam, model: str, content: str, max_tokens: int, stream: bool = False, hold=None):
        conv = [{"role": "user", "content": content}]
        self.events: list = []
        self.done = threading.Event()
        self.hold, self.reached = hold, threading.Event()
        self.job = Job(model=model, prompt_ids=chat_prompt_ids(sam.rt.tokenizer, conv), conversation=conv,
                       params=SamplingParams(max_new_tokens=max_tokens), stream=stream, sink=self.sink)

    def sink(self, event) -> None:
        self.events.append(event)
        if isinstance(event, TextDelta) and self.hold is not None and not self.reached.is_set():
            self.reached.set()
            assert self.hold.wait(30), "test hold never released"
        if isinstance(event, (Finished, Failed)):
            self.done.set()

    @property
    def result(self):
        assert self.done.wait(60), "job did not finish"
        return self.events[-1]


@pytest.fixture()
def scheduler(sam):
    s = Scheduler(sam, ServeConfig(max_tokens=64, batch_wait_ms=1))
    s.start()
    yield s
    assert s.stop(timeout=30)


def answer_alone(scheduler, sam, model, content, n):
    c = Client(sam, model, content, n)
    scheduler.submit(c.job)
    return c.result


@pytest.mark.slow  # over 1 s on 2 shared cores
def test_requests_join_a_running_batch_and_answer_as_alone(scheduler, sam):
    asks = [("math", "Tell me about triangles", 40), ("code", "Sort a list", 3), ("base", "Hello!", 20),
            ("auto", "A math puzzle", 9)]
    alone = [answer_alone(scheduler, sam, *a) for a in asks]
    assert {b["mode"] for b in scheduler.batch_log} == {"merged"}
    hold = threading.Event()
    first = Client(sam, *asks[0], stream=True, hold=hold)
    scheduler.submit(first.job)
    assert first.reached.wait(30)  # the worker is inside a decoding step of the first request
    others = [Client(sam, *a) for a in asks[1:]]
    for c in others:
        scheduler.submit(c.job)
    hold.set()
    results = [first.result] + [c.result for c in others]
    for got, want in zip(results, alone):
        assert isinstance(got, Finished)
        assert (got.expert, got.text, got.completion_tokens) == (want.expert, want.text, want.completion_tokens)
    joined = scheduler.batch_log[-1]
    assert joined["size"] == 3 and joined["running"] == 4 and joined["mode"] == "rows"  # joined a running batch
    assert sorted(joined["experts"]) == sorted(r.expert for r in alone[1:])
    started = [e for e in first.events if isinstance(e, Started)]
    assert len(started) == 1 and started[0].mode == "merged"
    deltas = [e.text for e in first.events if isinstance(e, TextDelta)]
    assert "".join(deltas) == results[0].text and len(deltas) > 1


def test_cancelling_a_running_request_leaves_the_others_alone(scheduler, sam):
    want = answer_alone(scheduler, sam, "code", "Count to twenty", 30)
    hold = threading.Event()
    doomed = Client(sam, "math", "Write a long story", 60, stream=True, hold=hold)
    scheduler.submit(doomed.job)
    assert doomed.reached.wait(30)
    other = Client(sam, "code", "Count to twenty", 30)
    scheduler.submit(other.job)
    scheduler.cancel(doomed.job)
    hold.set()
    assert isinstance(doomed.result, Failed) and doomed.result.error.code == "cancelled"
    got = other.result
    assert (got.text, got.completion_tokens) == (want.text, want.completion_tokens)
    stats = scheduler.health()["stats"]
    assert stats["cancelled_running"] == 1 and scheduler.health()["admitted"] == 0


@pytest.mark.slow  # over 1 s on 2 shared cores
def test_without_mixing_each_batch_runs_one_expert_in_order_of_the_oldest_request(sam):
    """mix_experts=False: queued requests run in batches of one expert each, on merged weights, the oldest
    request's first; later requests never join ahead of an older one for other weights; an "auto" request that
    chose another expert than its batch's waits for a batch of its own, without a second pass 1."""
    s = Scheduler(sam, ServeConfig(max_tokens=64, batch_wait_ms=1, mix_experts=False))
    s.start()
    try:
        asks = [("auto", "A math puzzle", 6), ("code", "Sort a list", 5), ("auto", "Some code please", 4),
                ("math", "Tell me about triangles", 7), ("base", "Hello!", 3)]
        alone = [answer_alone(s, sam, *a) for a in asks]
        assert [r.expert for r in alone] == ["math", "code", "code", "math", "base"]
        calls = sam.strategy.calls
        hold = threading.Event()
        first = Client(sam, "base", "Count to ten", 12, stream=True, hold=hold)
        s.submit(first.job)
        assert first.reached.wait(30)  # the worker is inside the base batch's first step
        start = len(s.batch_log)
        others = [Client(sam, *a) for a in asks]
        for c in others:
            s.submit(c.job)
        hold.set()
        results = [c.result for c in others]
        assert isinstance(first.result, Finished)
        for got, want in zip(results, alone):
            assert isinstance(got, Finished)
            assert (got.expert, got.text, got.completion_tokens) == (want.expert, want.text, want.completion_tokens)
        batches = list(s.batch_log)[start:]
        assert [b["experts"] for b in batches] == [["math"], ["code", "code"], ["math"], ["base"]]
        assert {b["mode"] for b in batches} == {"merged"} and [b["running"] for b in batches] == [1, 2, 1, 1]
        assert sam.strategy.calls == calls + 1  # both "auto" requests in one pass 1, the second kept its choice
        assert s.health()["admitted"] == 0
    finally:
        assert s.stop(timeout=30)
