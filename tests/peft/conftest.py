"""Every PEFT test gets a private T2_CACHE: an adapter loaded with `PeftModel.from_pretrained` decomposes with the
SVD cache on (its saved config's default), and factors cached by another run (at another thread count, so
rounded differently) must neither leak into these tests nor be written into the user's cache.

This folder has no __init__.py on purpose: tests/ is not a package, so as one this folder would be imported as
`peft` and shadow the real PEFT."""

import pytest


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("T2_CACHE", str(tmp_path / "t2-cache"))
