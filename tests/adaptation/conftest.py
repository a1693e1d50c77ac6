"""Fixtures for the adaptation tests: tiny random models (with and without the embedded model's tokenizer),
expert sets made of random experts, and a saved tiny model directory for CLI tests."""

from __future__ import annotations

import pytest
import torch

from transformer_squared.adaptation.expert_set import ExpertSet
from transformer_squared.adaptation.runtime import Runtime
from transformer_squared.adapted import AdaptedModel
from transformer_squared.experts import Expert
from transformer_squared.models import LoadedModel
from transformer_squared.testing import tiny_chat_model, tiny_model

DOMAINS = ("code", "math", "reasoning")


def tiny_adapted(arch: str = "llama", seed: int = 0, tokenizer=None, model=None) -> AdaptedModel:
    model = model if model is not None else tiny_model(arch, seed=seed)
    lm = LoadedModel(model=model, tokenizer=tokenizer, name=f"tiny-{arch}-{seed}", source="local", path="")
    return AdaptedModel.prepare(lm, cache=False, progress=False)


def random_experts(am: AdaptedModel, std: float = 0.3) -> dict[str, Expert]:
    return {d: Expert.random(am.shapes(), std, seed=i + 1, meta=am.expert_meta(domain=d))
            for i, d in enumerate(DOMAINS)}


@pytest.fixture
def tiny_am():
    return tiny_adapted()



def tiny_chat_lm(tokenizer, seed: int = 0) -> LoadedModel:
    return LoadedModel(model=tiny_chat_model(tokenizer, seed), tokenizer=tokenizer, name=f"tiny-chat-{seed}",
                       source="local", path="")


@pytest.fixture
def chat_am(smol_tokenizer):
    return AdaptedModel.prepare(tiny_chat_lm(smol_tokenizer), cache=False, progress=False)


@pytest.fixture
def chat_runtime(chat_am):
    return Runtime.build(chat_am, ExpertSet.from_experts(random_experts(chat_am)), batch_size=4)


@pytest.fixture(scope="session")
def tiny_experts_dir(tmp_path_factory, tiny_model_dir):
    """DIR/<domain>/ random experts for the saved tiny model (made through the public loading path)."""
    from transformer_squared.models import load_model

    root = tmp_path_factory.mktemp("experts")
    am = AdaptedModel.prepare(load_model(str(tiny_model_dir)), cache=False, progress=False)
    for d, e in random_experts(am).items():
        e.meta["name"] = d
        e.save(root / d)
    return root
