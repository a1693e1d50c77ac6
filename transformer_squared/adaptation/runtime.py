"""What every strategy and pass 2 share: the adapted model, its engine, the merged-weight cache, the experts."""

from __future__ import annotations

from dataclasses import dataclass

from ..generation import Engine
from .cache import DEFAULT_CACHE_BYTES, WeightCache
from .expert_set import ExpertSet


@dataclass
class Runtime:
    am: object  # adapted.AdaptedModel
    experts: ExpertSet
    engine: object  # generation.Engine
    cache: WeightCache

    @classmethod
    def build(cls, am, experts: ExpertSet, *, batch_size: int = 16, cache_bytes: int = DEFAULT_CACHE_BYTES,
              engine=None) -> "Runtime":
        engine = engine or Engine(am.model, am.tokenizer, max_batch_size=batch_size)
        return cls(am, experts, engine, WeightCache(am.svf, cache_bytes))

    @property
    def model(self):
        return self.am.model

    @property
    def tokenizer(self):
        return self.am.tokenizer
