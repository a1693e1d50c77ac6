"""Decompose the target matrices once, W = U diag(σ) Vᵀ, in fp32, and cache the factors as safetensors.

The cache is content-addressed: the key hashes every target matrix's bytes (and shape and dtype), so the same
weights are never decomposed twice and changed weights are never served stale factors. The reference code
pickled every matrix of the model (~40 GB for Llama3-8B); we store only the targets, never pickle.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from .fileio import atomic_path
from .paths import cache_dir
from .targets import weight_matrix

SVD_FORMAT = 1


@dataclass
class Factors:
    """Reduced SVD of one (m, n) matrix: U (m, r), S (r,), Vh (r, n), r = min(m, n); fp32."""

    U: torch.Tensor
    S: torch.Tensor
    Vh: torch.Tensor

    @property
    def rank(self) -> int:
        return self.S.numel()

    @property
    def shape(self) -> tuple[int, int]:
        return self.U.shape[0], self.Vh.shape[1]

    def to(self, device) -> "Factors":
        return Factors(self.U.to(device), self.S.to(device), self.Vh.to(device))


def matrix_digest(w: torch.Tensor) -> str:
    """A content hash of one weight matrix (bytes, shape, dtype)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{tuple(w.shape)}|{w.dtype}".encode())
    t = w.detach().contiguous().cpu()
    h.update(t.view(torch.uint8).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes())
    return h.hexdigest()


def fingerprint(model: nn.Module, names: list[str]) -> dict[str, str]:
    """Per-module content digests of the target matrices."""
    modules = dict(model.named_modules())
    return {n: matrix_digest(weight_matrix(modules[n])) for n in names}


def model_fingerprint(digests: dict[str, str]) -> str:
    """One hash over the per-matrix digests: the identity of the adapted weights."""
    return hashlib.blake2b("\n".join(f"{k}={v}" for k, v in sorted(digests.items())).encode(),
                           digest_size=16).hexdigest()


def decompose_matrix(w: torch.Tensor) -> Factors:
    """Reduced SVD in fp32 on the matrix's own device."""
    U, S, Vh = torch.linalg.svd(w.detach().float(), full_matrices=False)
    return Factors(U.contiguous(), S.contiguous(), Vh.contiguous())


def decompose(
    model: nn.Module,
    names: list[str],
    *,
    cache: bool = True,
    progress: bool = True,
    digests: dict[str, str] | None = None,
) -> dict[str, Factors]:
    """SVD factors of the named modules' weights, from the cache when present (else computed and cached)."""
    digests = digests or fingerprint(model, names)
    key = model_fingerprint(digests)
    path = cache_dir() / "svd" / f"{key}.safetensors"
    if cache and path.is_file():
        factors = _load(path, names)
        if factors is not None:
            return factors
    modules = dict(model.named_modules())
    factors: dict[str, Factors] = {}
    for n in tqdm(names, desc="SVD", unit="matrix", disable=not progress, leave=False):
        factors[n] = decompose_matrix(weight_matrix(modules[n]))
    if cache:
        _save(path, factors, digests)
    return factors


def _save(path: Path, factors: dict[str, Factors], digests: dict[str, str]) -> None:
    tensors = {}
    for n, f in factors.items():
        tensors[f"{n}::U"], tensors[f"{n}::S"], tensors[f"{n}::Vh"] = f.U.cpu(), f.S.cpu(), f.Vh.cpu()
    meta = {"format": str(SVD_FORMAT), "digests": json.dumps(digests)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def _load(path: Path, names: list[str]) -> dict[str, Factors] | None:
    try:
        tensors = load_file(str(path))
    except Exception:  # a corrupt cache entry is recomputed, never trusted
        return None
    try:
        return {n: Factors(tensors[f"{n}::U"], tensors[f"{n}::S"], tensors[f"{n}::Vh"]) for n in names}
    except KeyError:
        return None
