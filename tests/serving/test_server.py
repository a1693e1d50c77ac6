"""The live server (uvicorn on 127.0.0.1, tiny model) through the official openai client: chat, streaming,
completions, model selection, errors, batching of mixed experts, queue limits, disconnects, draining shutdown."""

from __future__ import annotations

import http.client as httplib
import json
import socket
import threading
import time

import pytest

openai = pytest.importorskip("openai")  # the serve extra and the client: installed by make setup
pytest.importorskip("fastapi")

from transformer_squared.generation import SamplingParams  # noqa: E402

from .conftest import live_server  # noqa: E402

HI = [{"role": "user", "content": "Hello! Who are you?"}]


def http(server, method, path, body=None, raw: bytes | None = None):
    """One plain HTTP request: (status, parsed JSON body)."""
    conn = httplib.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        conn.request(method, path, body=data, headers={"content-type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def wait_for(predicate, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def in_thread(fn, *args, **kw):
    """Run fn in a thread; returns (thread, box) where box holds its result or exception."""
    box = {}

    def target():
        try:
            box["result"] = fn(*args, **kw)
        except Exception as e:  # noqa: BLE001 - handed to the test
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, box


def ask(client, model, content, max_tokens=8, **kw):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}],
                                          temperature=0, max_tokens=max_tokens, **kw)


# -- the basics ------------------------------------------------------------------------------------------------
def test_models_and_health(server):
    assert [m.id for m in server.client().models.list()] == ["auto", "base", "code", "math"]
    status, body = http(server, "GET", "/health")
    assert status == 200 and body["status"] == "ok" and body["max_queue"] == 8
    assert http(server, "GET", "/v1/models/math")[1]["id"] == "math"
    status, body = http(server, "GET", "/v1/models/nope")
    assert status == 404 and body["error"]["code"] == "model_not_found"


@pytest.mark.parametrize("model, content, expert", [
    ("base", "Hello there", "base"),
    ("math", "Hello there", "math"),
    ("code", "Hello there", "code"),
    ("auto", "A math question: 2 + 2?", "math"),
    ("auto", "Hello there", "base"),
])
def test_model_selection_names_the_expert(server, model, content, expert):
    raw = server.client().chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": content}], temperature=0, max_tokens=6)
    r = raw.parse()
    assert raw.headers["x-t2-expert"] == expert
    assert r.expert == expert and r.system_fingerprint.endswith(":" + expert) and r.model == model
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    # the tiny random model never samples EOS in 6 tokens: every answer runs to max_tokens
    assert (r.choices[0].finish_reason, r.usage.completion_tokens) == ("length", 6)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_greedy_chat_equals_the_engine(server, sam):
    r = server.client().chat.completions.create(model="base", messages=HI, temperature=0, max_tokens=12)
    sam.rt.cache.activate(None)  # the server is idle between requests; its worker leaves any weights merged
    ref = sam.rt.engine.generate_chat([HI], SamplingParams(max_new_tokens=12))[0]
    assert r.choices[0].message.content == ref.text and r.usage.completion_tokens == len(ref.token_ids)


def test_experts_change_the_answer(server):
    c = server.client()
    answers = {m: ask(c, m, "Tell me a story", max_tokens=10).choices[0].message.content for m in ("base", "math")}
    assert answers["base"] != answers["math"]


def test_streaming_matches_non_streaming(server):
    c = server.client()
    whole = ask(c, "math", "Count to ten", max_tokens=12)
    raw = c.chat.completions.with_raw_response.create(
        model="math", messages=[{"role": "user", "content": "Count to ten"}], temperature=0, max_tokens=12,
        stream=True, stream_options={"include_usage": True})
    assert raw.headers["x-t2-expert"] == "math" and raw.headers["content-type"].startswith("text/event-stream")
    chunks = list(raw.parse())
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content
    finals = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(ch.expert == "math" and ch.id == chunks[0].id for ch in chunks)


def test_sse_wire_format_ends_with_done(server):
    conn = httplib.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("POST", "/v1/chat/completions", body=json.dumps(
            {"model": "base", "messages": HI, "max_tokens": 3, "stream": True}),
            headers={"content-type": "application/json"})
        lines = [ln for ln in conn.getresponse().read().decode().split("\n\n") if ln]
    finally:
        conn.close()
    assert all(ln.startswith("data: ") for ln in lines) and lines[-1] == "data: [DONE]"
    assert json.loads(lines[0][6:])["object"] == "chat.completion.chunk"


def test_completions_text_ids_and_stream(server, sam):
    c = server.client()
    r = c.completions.create(model="code", prompt="def add(a, b):", max_tokens=6, temperature=0)
    assert r.object == "text_completion" and r.expert == "code" and r.usage.completion_tokens <= 6
    ids = sam.rt.tokenizer("def add(a, b):", add_special_tokens=False)["input_ids"]
    by_ids = c.completions.create(model="code", prompt=ids, max_tokens=6, temperature=0)
    assert by_ids.choices[0].text == r.choices[0].text
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(
        model="code", prompt="def add(a, b):", max_tokens=6, temperature=0, stream=True) if ch.choices)
    assert streamed == r.choices[0].text


def test_stop_and_seed(server):
    c = server.client()
    full = ask(c, "base", "Say something", max_tokens=12).choices[0].message.content
    stop = full[3:6]
    cut = ask(c, "base", "Say something", max_tokens=12, stop=[stop])
    assert cut.choices[0].finish_reason == "stop" and cut.choices[0].message.content == full[: full.index(stop)]
    sampled = [c.chat.completions.create(model="base", messages=HI, max_tokens=8, temperature=1.0, seed=s)
               .choices[0].message.content for s in (1, 1, 2)]
    assert sampled[0] == sampled[1] != sampled[2]


# -- errors ----------------------------------------------------------------------------------------------------
def error_of(status_class, fn):
    with pytest.raises(status_class) as e:
        fn()
    err = e.value.body  # the openai client's parsed "error" object
    assert set(err) >= {"message", "type", "param", "code"}
    return e.value.status_code, err


def test_errors_are_openai_shaped(server):
    c = server.client()
    status, body = http(server, "POST", "/v1/chat/completions", raw=b'{"model": "base", "messages": [')
    assert status == 400 and body["error"]["code"] == "invalid_json" and body["error"]["type"] == "invalid_request_error"
    status, err = error_of(openai.BadRequestError, lambda: c.chat.completions.create(
        model="base", messages=HI, temperature=-1))
    assert status == 400 and err["param"] == "temperature"
    status, err = error_of(openai.BadRequestError, lambda: c.chat.completions.create(model="base", messages=HI, n=2))
    assert err["param"] == "n" and err["code"] == "unsupported_parameter"
    status, err = error_of(openai.NotFoundError, lambda: ask(c, "gpt-5", "hi"))
    assert status == 404 and err["code"] == "model_not_found" and "math" in err["message"]
    status, err = error_of(openai.BadRequestError, lambda: ask(c, "base", "hi", max_tokens=65))
    assert err["param"] == "max_tokens" and err["code"] == "max_tokens_exceeded" and "64" in err["message"]
    status, err = error_of(openai.BadRequestError, lambda: ask(c, "base", "word " * 300))
    assert err["code"] == "context_length_exceeded" and "256" in err["message"]
    status, body = http(server, "GET", "/v1/nothing-here")
    assert status == 404 and body["error"]["code"] == "not_found"
    assert http(server, "GET", "/health")[1]["admitted"] == 0  # refused requests took no slot


# -- batching --------------------------------------------------------------------------------------------------
MIXED = [("math", "Tell me about triangles", 5), ("base", "Hello!", 12), ("code", "Sort a list", 9),
         ("auto", "A math puzzle for you", 12), ("math", "Another one", 3)]


@pytest.mark.slow  # over 1 s on 2 shared cores
def test_mixed_experts_in_one_batch_equal_each_alone(sam):
    with live_server(sam, max_queue=16, max_tokens=64, batch_wait_ms=5) as server:
        c = server.client()
        alone = [ask(c, m, p, max_tokens=n) for m, p, n in MIXED]
        assert all(r.expert for r in alone) and {b["mode"] for b in server.scheduler.batch_log} == {"merged"}
        # Hold the worker in pass 1 of a first batch, queue the mixed requests behind it, then let go: they are
        # taken together as the next batch.
        sam.strategy.gate = threading.Event()
        try:
            holder = in_thread(ask, c, "auto", "hold", 2)
            wait_for(lambda: server.scheduler.health()["running"] == 1, "the holder to start")
            threads = [in_thread(ask, c, m, p, max_tokens=n) for m, p, n in MIXED]
            wait_for(lambda: server.scheduler.health()["queued"] == len(MIXED), "the mixed requests to queue")
        finally:
            sam.strategy.gate.set()
        for t, _ in [holder, *threads]:
            t.join(30)
        together = [box["result"] for _, box in threads]
        batch = server.scheduler.batch_log[-1]
        assert batch["size"] == len(MIXED) and batch["mode"] == "rows"
        assert sorted(batch["experts"]) == sorted(r.expert for r in alone)
        for a, b in zip(alone, together):
            assert (b.expert, b.choices[0].message.content, b.usage.completion_tokens) == \
                   (a.expert, a.choices[0].message.content, a.usage.completion_tokens)
    sam.strategy.gate = None


# -- limits, disconnects, shutdown -----------------------------------------------------------------------------
def test_queue_full_is_429_and_a_disconnect_frees_its_slot(sam):
    with live_server(sam, max_queue=2, max_tokens=1500, batch_wait_ms=1) as server:
        c = server.client()
        health = server.scheduler.health
        sam.strategy.gate = threading.Event()
        try:
            holder = in_thread(ask, c, "auto", "hold", 4)  # running (held in pass 1)
            wait_for(lambda: health()["running"] == 1, "the holder to run")
            # a raw client queues a request, then hangs up before it is served
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            body = json.dumps({"model": "base", "messages": HI, "max_tokens": 5}).encode()
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                         b"content-length: %d\r\n\r\n%s" % (len(body), body))
            wait_for(lambda: health()["admitted"] == 2, "the raw request to queue")
            status, err = error_of(openai.RateLimitError, lambda: ask(c, "base", "one too many"))
            assert status == 429 and err["code"] == "queue_full" and health()["stats"]["refused_full"] == 1
            sock.close()
            wait_for(lambda: health()["admitted"] == 1, "the disconnected request to leave the queue")
            assert health()["stats"]["cancelled_queued"] == 1
            queued = in_thread(ask, c, "code", "now there is room", 4)  # admitted into the freed slot
            wait_for(lambda: health()["admitted"] == 2, "the next request to be admitted")
        finally:
            sam.strategy.gate.set()
        for t, box in (holder, queued):
            t.join(30)
            assert "result" in box, box
        # (a batch's stats are counted just after its rows' results are sent: wait for the second batch's)
        wait_for(lambda: health()["stats"]["rows"] >= 2 and health()["running"] == 0, "the batches' stats")
        assert health()["stats"]["rows"] == 2  # the abandoned request never reached a batch

        # a streaming client that stops reading: its row is dropped from the running batch
        stream = c.chat.completions.create(model="base", messages=HI, temperature=0, max_tokens=1500, stream=True)
        for i, _ in zip(range(3), stream):
            pass
        stream.close()
        wait_for(lambda: health()["stats"]["cancelled_running"] == 1 and health()["admitted"] == 0,
                 "the streaming row to be dropped")
        assert server.scheduler.batch_log[-1]["new_tokens"] < 1500
    sam.strategy.gate = None


@pytest.mark.slow  # ~1 s on 2 shared cores
def test_shutdown_drains_admitted_requests(sam):
    with live_server(sam, max_queue=4, max_tokens=64, batch_wait_ms=1) as server:
        c = server.client()
        sam.strategy.gate = threading.Event()
        try:
            running = in_thread(ask, c, "auto", "math, held", 6)
            wait_for(lambda: server.scheduler.health()["running"] == 1, "the first request to run")
            streamed = in_thread(lambda: [ch for ch in c.chat.completions.create(
                model="code", messages=HI, temperature=0, max_tokens=20, stream=True)])
            wait_for(lambda: server.scheduler.health()["queued"] == 1, "the second request to queue")
            from transformer_squared.serving.app import request_exit

            request_exit(server.server)  # what SIGTERM does
            wait_for(lambda: server.scheduler.health()["status"] == "draining", "draining")
            time.sleep(0.3)  # uvicorn closes its listening socket
            with pytest.raises((openai.APIConnectionError, openai.InternalServerError)):
                ask(server.client(timeout=5), "base", "too late")
        finally:
            sam.strategy.gate.set()
        server.thread.join(30)
        assert not server.thread.is_alive()
        assert running[1]["result"].expert == "math" and running[1]["result"].usage.completion_tokens >= 1
        chunks = streamed[1]["result"]
        assert chunks[-1].choices[0].finish_reason in ("stop", "length") and chunks[-1].expert == "code"
    sam.strategy.gate = None


# -- hostile input and the API key -----------------------------------------------------------------------------
@pytest.mark.parametrize("path, raw, code", [
    # a lone surrogate (JSON allows the escape; no tokenizer can encode it), in a chat message and in a prompt
    ("/v1/chat/completions", b'{"model": "base", "messages": [{"role": "user", "content": "hi \\ud800"}]}',
     "invalid_text"),
    ("/v1/completions", b'{"model": "base", "prompt": "\\udfff x", "max_tokens": 2}', "invalid_text"),
    ("/v1/chat/completions", b'{"model": "base", "\\ud800": 1, "messages": []}', "invalid_text"),
    # nested 50,000 deep: Python's json raises RecursionError, not JSONDecodeError
    ("/v1/chat/completions", b'{"model": "base", "messages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
     "invalid_json"),
    ("/v1/completions", b"[" * 50_000, "invalid_json"),
    ("/v1/chat/completions", b'{"model": "base", "messages": "caf\xe9"}', "invalid_json"),  # Latin-1, not UTF-8
    ("/v1/completions", b'{"model": "base", "prompt": "x", "seed": ' + b"1" * 5000 + b"}", "invalid_json"),
])
def test_hostile_bodies_are_400_in_openai_shape(server, path, raw, code):
    status, body = http(server, "POST", path, raw=raw)
    assert status == 400, body
    assert body["error"]["code"] == code and body["error"]["type"] == "invalid_request_error"
    assert "\n" not in body["error"]["message"]
    if code == "invalid_text":
        assert "surrogate" in body["error"]["message"]
    assert http(server, "GET", "/health")[1]["admitted"] == 0


def test_surrogate_error_names_the_field(server):
    raw = b'{"model": "base", "messages": [{"role": "user", "content": [{"type": "text", "text": "\\ud83d"}]}]}'
    status, body = http(server, "POST", "/v1/chat/completions", raw=raw)
    assert status == 400 and body["error"]["param"] == "messages[0].content[0].text"
    status, body = http(server, "POST", "/v1/chat/completions", raw=raw.replace(b"\\ud83d", b"\\ud83d\\ude00"))
    assert status == 200, body  # the same character as a proper pair is fine


def test_api_key_is_required_when_set_as_vllm_does(sam):
    with live_server(sam, max_tokens=16, default_max_tokens=4, api_key="sk-t2-test") as server:
        good = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-t2-test", max_retries=0, timeout=30)
        assert [m.id for m in good.models.list()] == ["auto", "base", "code", "math"]
        assert ask(good, "base", "Hello", max_tokens=2).choices[0].message.content is not None
        wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-wrong", max_retries=0, timeout=30)
        status, err = error_of(openai.AuthenticationError, lambda: ask(wrong, "base", "Hello", max_tokens=2))
        assert status == 401 and err["code"] == "invalid_api_key" and "sk-wrong" not in err["message"]
        status, body = http(server, "GET", "/v1/models")  # no Authorization header at all
        assert status == 401 and "Authorization: Bearer" in body["error"]["message"]
        assert http(server, "GET", "/health")[0] == 200  # open, for load balancers
        assert server.scheduler.health()["stats"]["completed"] >= 1


def test_api_key_setting_is_checked_and_never_shown():
    from transformer_squared.errors import T2Error
    from transformer_squared.serving import ServeConfig

    config = ServeConfig(api_key="sk-secret")
    assert "sk-secret" not in repr(config) and config.to_json()["api_key"] == "***"
    for bad in ("", "  ", "key with\nnewline", "clé"):
        with pytest.raises(T2Error, match="API key"):
            ServeConfig(api_key=bad)
