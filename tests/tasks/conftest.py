"""Fixtures for the task tests: the benchmark data directory that sits beside the repository (../shared/data)."""

from pathlib import Path

import pytest

SHARED_DATA = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real benchmark files (CI clones the repository with ../shared beside it)."""
    if not (SHARED_DATA / "gsm8k" / "test.jsonl").is_file():
        pytest.skip(f"benchmark data not found at {SHARED_DATA} (expected ../shared/data beside the repository)")
    return SHARED_DATA
