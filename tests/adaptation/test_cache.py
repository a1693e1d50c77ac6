"""The merged-weight cache: cached switches equal fresh merges, LRU by bytes, mixes from cached W'."""

import torch

from transformer_squared.adaptation.cache import WeightCache, expert_key
from transformer_squared.experts import mix

from .conftest import random_experts


def _weights(am):
    return {n: m.base.weight.detach().clone() for n, m in am.svf.layers.items()}


def test_cached_switch_equals_fresh_merge_and_restore_is_exact(tiny_am):
    base = _weights(tiny_am)
    experts = random_experts(tiny_am)
    fresh = {}
    for d, e in experts.items():
        tiny_am.svf.merge(e.z)
        fresh[d] = _weights(tiny_am)
        tiny_am.svf.restore()
    cache = WeightCache(tiny_am.svf)
    for d in ["math", "code", "math", "reasoning", "code", None, "math"]:
        cache.activate(experts[d] if d else None)
        got = _weights(tiny_am)
        want = fresh[d] if d else base
        assert all(torch.equal(got[n], want[n]) for n in got), d
    assert cache.stats["merges"] == 3 and cache.stats["hits"] == 3
    cache.activate(None)
    assert all(torch.equal(w, base[n]) for n, w in _weights(tiny_am).items())
    tiny_am.svf.merge(experts["math"].z)  # someone else merges: the cache notices and rewrites
    cache.activate(experts["code"])
    assert all(torch.equal(w, fresh["code"][n]) for n, w in _weights(tiny_am).items())
    tiny_am.svf.merge(experts["reasoning"].z)  # ... even behind the expert the cache thinks is active
    cache.activate(experts["code"])
    assert all(torch.equal(w, fresh["code"][n]) for n, w in _weights(tiny_am).items())
    tiny_am.svf.restore()
    assert all(torch.equal(w, base[n]) for n, w in _weights(tiny_am).items())


def test_lru_by_bytes(tiny_am):
    experts = list(random_experts(tiny_am).values())
    size = WeightCache(tiny_am.svf).entry_bytes()
    cache = WeightCache(tiny_am.svf, max_bytes=2 * size)
    for e in experts:
        cache.activate(e)
    assert experts[0] not in cache and experts[1] in cache and experts[2] in cache
    assert cache.bytes_used == 2 * size
    cache.activate(experts[1])  # a hit makes it the most recent
    cache.activate(experts[0])  # evicts experts[2], the least recent
    assert experts[2] not in cache and experts[1] in cache
    none = WeightCache(tiny_am.svf, max_bytes=size - 1)  # nothing fits: every switch merges
    none.activate(experts[0])
    none.activate(None)
    none.activate(experts[0])
    assert none.stats["merges"] == 2 and none.bytes_used == 0


def test_mix_from_cached_weights_matches_merging_the_mixed_z(tiny_am):
    experts = list(random_experts(tiny_am).values())
    M = len(experts[0].z)
    cache = WeightCache(tiny_am.svf)
    for alpha in (torch.tensor([0.2, 0.5, 0.3]), torch.rand(3, M, generator=torch.Generator().manual_seed(0))):
        tiny_am.svf.merge(mix(experts, alpha).z)
        want = _weights(tiny_am)
        tiny_am.svf.restore()
        cache.activate_mix(experts, alpha)
        got = _weights(tiny_am)
        for n in got:  # exact up to the fp32 SVD reconstruction error, times |1 - Σα|
            assert torch.allclose(got[n], want[n], atol=1e-5, rtol=1e-5), n
        assert got[next(iter(got))].abs().sum() > 0
    assert cache.stats["merges"] == 3  # each expert merged once, mixes are axpys
    cache.activate(None)
    assert all(m.mode == "base" for m in tiny_am.svf.layers.values())


def test_expert_key_is_content_based(tiny_am):
    a, b = list(random_experts(tiny_am).values())[:2]
    assert expert_key(a) != expert_key(b)
    assert expert_key(a) == expert_key(type(a)({n: t.clone() for n, t in a.z.items()}, {}))
