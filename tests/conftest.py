"""Shared fixtures: the shared data directory and the real embedded model."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"benchmark data not found at {SHARED_DATA} (CI clones the repo with ../shared beside it)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def embedded(tmp_path_factory):
    """The real embedded default (SmolLM2-135M-Instruct), loaded once per test session. It uses the user's
    cache (content-addressed, so sharing it is safe): the ~20 s GGUF conversion and the ~60 s SVD happen once
    per machine, not once per run."""
    from transformer_squared.models import load_model

    return load_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smol_tokenizer():
    """The embedded model's tokenizer (chat template), without loading its weights."""
    from transformers import AutoTokenizer

    from transformer_squared.models import resolve

    path, _ = resolve("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smol_tokenizer):
    """A saved tiny chat model (HF directory) for `--model DIR` in CLI tests."""
    from transformer_squared.testing import tiny_chat_model

    path = tmp_path_factory.mktemp("tiny-chat-model")
    tiny_chat_model(smol_tokenizer).save_pretrained(path)
    smol_tokenizer.save_pretrained(path)
    return path


def pytest_collection_modifyitems(config, items):
    """Every test that loads the real embedded model (through the `embedded` fixture, however indirectly) is
    `slow`, so `make test-fast` (-m "not slow") never loads it; a test that loads it another way (a subprocess
    with the default --model) carries the mark itself."""
    for item in items:
        if "embedded" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)
