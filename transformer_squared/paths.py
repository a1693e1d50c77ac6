"""Where things live: the cache (`T2_CACHE`) and the benchmark data directory (`T2_DATA_DIR`)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of everything the library caches (converted models, SVD factors). `T2_CACHE` overrides."""
    root = os.environ.get("T2_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "transformer-squared")
    return Path(root)


def data_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """The benchmark data directory: `explicit`, else `T2_DATA_DIR`, else None (meaning: use the hub)."""
    value = explicit if explicit is not None else os.environ.get("T2_DATA_DIR")
    return Path(value).expanduser() if value else None
