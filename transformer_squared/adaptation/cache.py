"""Switching experts cheaply: a memory-bounded cache of merged weights W' per expert (LRU by bytes).

Merging an expert recomposes W' = W + U diag(σ ⊙ (z − 1)) Vᵀ for every adapted matrix: m·n·r multiply-adds each,
~46 GMAC for SmolLM2-135M's 90 MLP matrices (seconds on a small CPU). Pass 2 switches experts for every group
of prompts, so the first merge of an expert keeps a copy of its W' tensors; switching back is then a copy.

Mixtures (few-shot α) are built from cached experts without any recomposition: W'(z) is affine in z, so

    W'(Σ_k α_k z_k) = Σ_k α_k W'(z_k) + (1 − Σ_k α_k) · (W − U diag(σ) Vᵀ)

and the last term is the fp32 reconstruction error of the SVD (~1e-6 relative), exactly 0 when Σα = 1. So the
mix is Σ_k α_k W'_k (fp32 accumulation, cast back): K axpys instead of a recomposition; off by at most
|1 − Σα| × that reconstruction error for free (unnormalised) α.

Every W' here was computed by svf.py (`SVF.merge`, i.e. `apply_z`, the one place z is applied) or is a mix of such
W'; cached weights go back in through `SVFLinear.load_merged`, under SVFLinear's merge contract: the layer keeps
the original weight and `restore()` copies it back, bit-exact. Keys are digests of z, so an expert is never served
stale W'.
The cache belongs to one model: weights changed by anything else (training) invalidate it (`clear()`).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from typing import Mapping, Sequence

import torch

from ..experts import Expert
from ..svf import SVF, Mode

# 2 GiB: SmolLM2-135M's three experts and the dispatch expert in fp32 (318 MB each), so the classifier strategy's
# pass-1/pass-2 switching never evicts (at 1 GiB, four experts in a three-entry LRU re-merge on every chunk).
DEFAULT_CACHE_BYTES = 2 << 30


def z_digest(z: Mapping[str, torch.Tensor]) -> str:
    """A content hash of an expert's z (names, shapes and values)."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(z):
        t = z[name].detach().float().contiguous().cpu()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def expert_key(expert: Expert) -> str:
    """The cache key of an expert (memoised on the object; experts are not mutated after loading)."""
    key = getattr(expert, "_t2_digest", None)
    if key is None:
        key = z_digest(expert.z)
        object.__setattr__(expert, "_t2_digest", key)
    return key


class WeightCache:
    """Activates experts on one SVF-wrapped model, keeping merged W' of recent experts within `max_bytes`."""

    def __init__(self, svf: SVF, max_bytes: int = DEFAULT_CACHE_BYTES):
        self.svf = svf
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        self.current: str | None = None  # key of the active weights (None: base)
        self._seen: list[int] | None = None  # weight versions right after our last switch
        self.stats = {"merges": 0, "hits": 0, "mixes": 0, "merge_seconds": 0.0, "switch_seconds": 0.0,
                      "mix_seconds": 0.0}

    # -- bookkeeping ---------------------------------------------------------------------------------------
    @property
    def bytes_used(self) -> int:
        return sum(_nbytes(e) for e in self._entries.values())

    def entry_bytes(self) -> int:
        """What one cached expert costs: the adapted weights' size."""
        return sum(m.base.weight.numel() * m.base.weight.element_size() for m in self.svf.layers.values())

    def __contains__(self, expert: Expert) -> bool:
        return expert_key(expert) in self._entries

    def clear(self) -> None:
        self._entries.clear()

    def _versions(self) -> list[int]:
        # A tensor's version counter grows with every in-place write: if it moved since our last switch, someone
        # else (apply, merge, restore, training) changed the weights and `current` is stale.
        return [m.base.weight._version for m in self.svf.layers.values()]

    def _in_state(self, key: str | None) -> bool:
        """Whether the layers really hold what `current` says (someone else may have merged or restored)."""
        if key != self.current or self._seen != self._versions():
            return False
        want = Mode.BASE if key is None else Mode.MERGED
        return all(m.mode is want for m in self.svf.layers.values())

    def _store(self, key: str) -> None:
        size = self.entry_bytes()
        if size > self.max_bytes:
            return
        while self._entries and self.bytes_used + size > self.max_bytes:
            self._entries.popitem(last=False)
        self._entries[key] = {n: m.base.weight.detach().clone() for n, m in self.svf.layers.items()}

    # -- switching -----------------------------------------------------------------------------------------
    def activate(self, expert: Expert | None) -> float:
        """Make the model run with `expert`'s W' (None: base weights). Returns the seconds it took."""
        key = None if expert is None else expert_key(expert)
        if self._in_state(key):
            return 0.0
        t0 = time.perf_counter()
        if expert is None:
            self.svf.restore()
        elif key in self._entries:
            self._entries.move_to_end(key)
            for n, m in self.svf.layers.items():
                m.load_merged(self._entries[key][n])
            self.stats["hits"] += 1
        else:
            self.svf.merge(expert.z)
            self.stats["merges"] += 1
            self.stats["merge_seconds"] += time.perf_counter() - t0
            self._store(key)
        self.current, self._seen = key, self._versions()
        dt = time.perf_counter() - t0
        self.stats["switch_seconds"] += dt
        return dt

    @torch.no_grad()
    def activate_mix(self, experts: Sequence[Expert], alpha: torch.Tensor) -> float:
        """Run with z' = Σ_k α_k z_k; `alpha` is (K,) or (K, M) in the experts' matrix order. Seconds taken.

        Uses Σ_k α_k W'_k when every expert fits in the cache (see the module docstring), else one merge.
        """
        t0 = time.perf_counter()
        alpha = torch.as_tensor(alpha, dtype=torch.float32)
        names = list(experts[0].z)
        table = alpha[:, None].expand(len(experts), len(names)) if alpha.dim() == 1 else alpha  # (K, M)
        fits = self.entry_bytes() * len(experts) <= self.max_bytes
        if fits:
            for e in experts:  # merge each expert once (cached), then only axpys
                if expert_key(e) not in self._entries:
                    self.activate(e)
            entries = [self._entries[expert_key(e)] for e in experts]
            for j, n in enumerate(names):
                layer = self.svf.layers[n]
                acc = torch.zeros_like(entries[0][n], dtype=torch.float32)
                for k, entry in enumerate(entries):
                    acc.add_(entry[n].float(), alpha=float(table[k, j]))
                if not torch.isfinite(acc).all():
                    raise ValueError("mixed weights are not finite")
                layer.load_merged(acc.to(layer.base.weight.dtype))
        else:
            z = {n: sum(float(table[k, j]) * e.z[n] for k, e in enumerate(experts)) for j, n in enumerate(names)}
            self.svf.merge(z)
        self.current = "mix:" + hashlib.blake2b(table.numpy().tobytes(), digest_size=8).hexdigest()
        self._seen = self._versions()
        dt = time.perf_counter() - t0
        self.stats["mixes"] += 1
        self.stats["mix_seconds"] += dt
        return dt


def _nbytes(entry: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in entry.values())
