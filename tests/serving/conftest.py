"""Fixtures for the server tests: a tiny random Llama over the embedded model's tokenizer (real chat template,
millisecond steps), random experts saved to disk, a keyword strategy that can be held in pass 1, and a live
uvicorn server on 127.0.0.1 in a thread."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest
import torch

from transformer_squared.adaptation.expert_set import ExpertSet
from transformer_squared.adaptation.model import SelfAdaptiveModel
from transformer_squared.adaptation.runtime import Runtime
from transformer_squared.adaptation.strategy import user_text
from transformer_squared.adapted import AdaptedModel
from transformer_squared.experts import Expert
from transformer_squared.models import LoadedModel
from transformer_squared.testing import tiny_chat_model

EXPERTS = ("math", "code")


def save_random_experts(am: AdaptedModel, root, std: float) -> None:
    """DIR/<name>/ random experts (z = 1 + std·N(0, 1)) named after their domain."""
    for i, name in enumerate(EXPERTS):
        Expert.random(am.shapes(), std, seed=i + 1, meta=am.expert_meta(name=name, domain=name)).save(root / name)


@pytest.fixture(scope="session")
def tiny_experts_dir(tmp_path_factory, tiny_model_dir):
    from transformer_squared.models import load_model

    root = tmp_path_factory.mktemp("serve-experts")
    save_random_experts(AdaptedModel.prepare(load_model(str(tiny_model_dir)), cache=False, progress=False), root, 0.3)
    return root


class KeywordStrategy:
    """Pass 1 for tests: the expert whose name appears in the last user message, else base. `gate` (an Event),
    when set on the instance, holds pass 1 until it is set, to fill the queue deterministically."""

    name = "keyword"

    def __init__(self, runtime):
        self.rt = runtime
        self.gate: threading.Event | None = None
        self.calls = 0

    def choose(self, conversations):
        self.calls += 1
        if self.gate is not None:
            assert self.gate.wait(30), "test gate never opened"
        out = []
        for c in conversations:
            text = user_text(c).lower()
            label = next((d for d in self.rt.experts.domains if d in text), "others")
            out.append(self.rt.experts.choice(label))
        return out


def make_sam(tokenizer, experts_dir, *, seed: int = 0, batch_size: int = 8) -> SelfAdaptiveModel:
    lm = LoadedModel(model=tiny_chat_model(tokenizer, seed), tokenizer=tokenizer, name="tiny-serve", source="local",
                     path="")
    am = AdaptedModel.prepare(lm, cache=False, progress=False)
    experts = ExpertSet.load(experts_dir, am, allow_transfer=True)
    rt = Runtime.build(am, experts, batch_size=batch_size)
    return SelfAdaptiveModel(rt, KeywordStrategy(rt))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """A uvicorn server for `scheduler` in a background thread on 127.0.0.1 (stopped with `stop`)."""

    def __init__(self, scheduler, config):
        from transformer_squared.serving.app import build_server

        self.scheduler = scheduler
        self.server = build_server(scheduler, config, log_level="warning")
        self.port = config.port
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.run, name="test-uvicorn", daemon=True)

    def start(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 30) -> None:
        from transformer_squared.serving.app import request_exit

        request_exit(self.server)
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "server did not stop"

    def client(self, timeout: float = 30):
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, timeout=timeout)


@contextlib.contextmanager
def live_server(sam, **config):
    """Serve `sam` on a free loopback port for the duration of the block."""
    from transformer_squared.serving import ServeConfig
    from transformer_squared.serving.scheduler import Scheduler

    cfg = ServeConfig(host="127.0.0.1", port=free_port(), **config)
    server = LiveServer(Scheduler(sam, cfg), cfg).start()
    try:
        yield server
    finally:
        if server.thread.is_alive():
            server.stop()


@pytest.fixture(scope="module")
def sam(smol_tokenizer, tiny_experts_dir):
    return make_sam(smol_tokenizer, tiny_experts_dir)


@pytest.fixture(scope="module")
def server(sam):
    """One live server for a test module: tiny model, experts math and code, keyword strategy for auto."""
    with live_server(sam, max_queue=8, max_tokens=64, default_max_tokens=16, max_prompt_tokens=256,
                     batch_wait_ms=20) as s:
        yield s
