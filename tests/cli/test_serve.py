"""`t2 serve` as a process: starts from the command line, answers, and on SIGTERM finishes the stream in flight
before exiting with status 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

openai = pytest.importorskip("openai")  # the serve extra and the client: installed by make setup
pytest.importorskip("fastapi")

from tests.serving.conftest import free_port, tiny_experts_dir  # noqa: E402,F401  (serving's expert set, not adaptation's)


def test_missing_extra_message():
    from transformer_squared.errors import T2Error
    from transformer_squared.serving import app

    real = __import__

    def no_fastapi(name, *args, **kw):
        if name == "fastapi":
            raise ImportError(name)
        return real(name, *args, **kw)

    import builtins

    builtins.__import__ = no_fastapi
    try:
        with pytest.raises(T2Error, match=r"pip install 'transformer-squared\[serve\]'"):
            app.require_deps()
    finally:
        builtins.__import__ = real


def test_bad_limit_is_a_one_line_error(tiny_model_dir, tiny_experts_dir):
    from transformer_squared.cli.main import main

    assert main(["serve", "--model", str(tiny_model_dir), "--experts", str(tiny_experts_dir), "--max-queue", "0"]) == 2


@pytest.mark.slow  # a `t2 serve` subprocess
def test_serve_answers_and_drains_on_sigterm(tiny_model_dir, tiny_experts_dir):
    port = free_port()
    cmd = [sys.executable, "-m", "transformer_squared.cli.main", "serve", "--model", str(tiny_model_dir),
           "--experts", str(tiny_experts_dir), "--strategy", "prompt", "--pass1-tokens", "4", "--port", str(port),
           "--max-tokens", "150", "--drain-timeout", "20", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "T2_API_KEY": "sk-from-env"})
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "t2 serve did not come up"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if json.load(r)["status"] == "ok":
                        break
            except OSError:
                time.sleep(0.2)
        with pytest.raises(urllib.error.HTTPError) as refused:  # T2_API_KEY set: /v1 needs the key
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=10)
        assert refused.value.code == 401 and json.load(refused.value)["error"]["code"] == "invalid_api_key"
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-from-env", max_retries=0,
                               timeout=60)
        r = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "2 + 2?"}],
                                           temperature=0, max_tokens=4)
        # the real prompt strategy: 4 tokens of the tiny random model name no domain, so the base weights answer
        assert r.expert == "base" and r.usage.completion_tokens <= 4

        stream = client.chat.completions.create(model="math", messages=[{"role": "user", "content": "Go on"}],
                                                temperature=0, max_tokens=150, stream=True)
        chunks = [next(stream), next(stream)]  # generating now
        proc.send_signal(signal.SIGTERM)
        chunks += list(stream)  # the stream in flight is finished, not cut
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
