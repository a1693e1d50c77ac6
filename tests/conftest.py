"""Shared fixtures: tiny random models of several architectures, an isolated cache, the shared data dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Tests get their own SVD cache; the converted embedded model is shared (read-only) to save 20 s each."""
    if "T2_TEST_KEEP_CACHE" not in os.environ:
        monkeypatch.setenv("T2_CACHE", str(tmp_path_factory.getbasetemp() / "t2-cache"))
    yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"benchmark data not found at {SHARED_DATA} (CI clones the repo with ../shared beside it)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def embedded(tmp_path_factory):
    """The real embedded default (SmolLM2-135M-Instruct), loaded once per test session, cache in the user's
    T2 cache so the ~20 s GGUF conversion happens once per machine, not per run."""
    from transformer_squared.models import load_model

    return load_model("smollm2-135m-instruct")
