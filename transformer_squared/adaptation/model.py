"""SelfAdaptiveModel: a model, an expert set and a strategy; answers prompts in two passes (SPEC §4).

    sam = SelfAdaptiveModel.from_dir("experts/", strategy="prompt")
    for r in sam.generate(["What is 17 * 23?"], SamplingParams(max_new_tokens=256)):
        print(r.expert, r.answer, r.pass1_seconds, r.pass2_seconds)

Pass 1 (`choose`): the strategy picks, per prompt, an expert, a mixture or the base weights. Pass 2 (`answer`):
prompts are grouped by choice and each group is generated in batches with that expert's W' merged; the merged
weights of recent experts are cached (cache.py), so switching back to an expert is a copy. Pass 2 starts from the
prompt again: pass 1's KV cache was computed with other weights and cannot be reused.

Timing: pass 1 and pass 2 run batched over all prompts, so a result's `pass1_seconds` is pass 1's wall time
divided by the number of prompts, and `pass2_seconds` its group's (switch + generation) time divided by the
group's size. `last_timing` holds the totals of the last call.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..adapted import AdaptedModel
from ..errors import T2Error
from ..experts import Expert
from ..generation import chat_prompt_ids
from ..models import DEFAULT_MODEL
from . import STRATEGIES
from .cache import DEFAULT_CACHE_BYTES, expert_key
from .classifier import ClassifierStrategy, no_dispatch_expert
from .expert_set import ExpertSet, scan, task_entries
from .fewshot import FewShotStrategy
from .prompt import PromptConfig, PromptStrategy
from .router import RouterStrategy, load_or_fit
from .runtime import Runtime
from .strategy import Choice, Conversation, Strategy, as_conversation
from .transfer import shuffle_expert_set



@dataclass
class AdaptiveResult:
    """One prompt's two-pass answer."""

    expert: str  # the expert's name, "base" for the base weights
    label: str  # what pass 1 decided: a domain, "others", or the few-shot expert's name
    answer: str
    pass1_seconds: float
    pass2_seconds: float
    alpha: Any = None  # mixing weights when pass 2 used a mixture
    finish_reason: str = ""
    tokens: int = 0
    pass1: dict[str, Any] = field(default_factory=dict)  # pass-1 evidence (classification text, similarities)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def make_strategy(name: str, runtime: Runtime, *, prompt_config: PromptConfig = PromptConfig(),
                  adapted=None, router=None, router_config=None, data_dir=None) -> Strategy:
    """Build a strategy by name: prompt | classifier | fewshot (needs `adapted`) | router."""
    if name == "prompt":
        return PromptStrategy(runtime, prompt_config)
    if name == "classifier":
        return ClassifierStrategy(runtime, prompt_config)
    if name == "fewshot":
        if adapted is None:
            raise T2Error("the fewshot strategy needs the adapted expert of the task: run `t2 adapt --task T "
                          "--experts DIR --out E` first and pass --adapted E")
        return FewShotStrategy(runtime, adapted)
    if name == "router":
        router = router or load_or_fit(runtime, router_config, data_dir=data_dir)
        return RouterStrategy(runtime, router)
    raise T2Error(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")


def _precheck(strategy: str, entries, adapted, directory) -> None:
    if strategy not in STRATEGIES:
        raise T2Error(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    if strategy == "fewshot" and adapted is None:
        make_strategy("fewshot", None)  # raises the how-to message
    if strategy == "classifier" and not any(e.role == "dispatch" for e in entries):
        raise no_dispatch_expert(directory)


class SelfAdaptiveModel:
    """Two-pass inference over an expert set (see the module docstring)."""

    def __init__(self, runtime: Runtime, strategy: Strategy):
        self.rt = runtime
        self.strategy = strategy
        self.last_timing: dict[str, float] = {}

    @classmethod
    def from_dir(cls, experts_dir: str | Path, *, model=DEFAULT_MODEL, strategy: str = "prompt",
                 allow_transfer: bool = False, adapted: str | Path | None = None, batch_size: int = 16,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, prompt_config: PromptConfig = PromptConfig(),
                 router_config=None, data_dir=None, shuffle_seed: int | None = None,
                 progress: bool = False) -> "SelfAdaptiveModel":
        """Load the model (spec or LoadedModel) with the experts' targets, every expert checked against it."""
        found = scan(experts_dir)
        entries = task_entries(found)
        _precheck(strategy, found, adapted, experts_dir)  # before the (slow) model loading
        if not entries:
            raise T2Error(f"{experts_dir}: no domain experts (expected DIR/<name>/expert.json)")
        targets = {e.meta.get("targets", "mlp") for e in entries}
        if len(targets) > 1:
            raise T2Error(f"{experts_dir}: experts adapt different targets ({', '.join(sorted(targets))}); "
                          f"an expert set needs one")
        first = Expert.load(entries[0].path)
        am = AdaptedModel.prepare(model, targets=targets.pop(), expert=first, allow_transfer=allow_transfer,
                                  progress=progress)
        experts = ExpertSet.load(experts_dir, am, allow_transfer=allow_transfer)
        if shuffle_seed is not None:
            experts = shuffle_expert_set(experts, shuffle_seed)
        adapted_expert = am.load_expert(adapted, allow_transfer=allow_transfer) if adapted else None
        rt = Runtime.build(am, experts, batch_size=batch_size, cache_bytes=cache_bytes)
        strat = make_strategy(strategy, rt, prompt_config=prompt_config, adapted=adapted_expert,
                              router_config=router_config, data_dir=data_dir)
        return cls(rt, strat)

    # -- the two passes ------------------------------------------------------------------------------------
    def choose(self, conversations: Sequence[Conversation | str]) -> tuple[list[Choice], float]:
        """Pass 1 over all conversations; returns (choices, seconds). Base weights are active afterwards."""
        convs = [as_conversation(c) for c in conversations]
        t0 = time.perf_counter()
        try:
            choices = self.strategy.choose(convs) if convs else []
        finally:
            self.rt.cache.activate(None)
        if len(choices) != len(convs):
            raise RuntimeError(f"strategy {self.strategy.name} returned {len(choices)} choices for "
                               f"{len(convs)} prompts")
        return choices, time.perf_counter() - t0

    def answer(self, prompt_ids: Sequence[Sequence[int]], choices: Sequence[Choice], params):
        """Pass 2: generate each prompt (token ids) with its choice's weights, grouped by choice.

        Returns (completions in input order, per-prompt amortised seconds, totals dict)."""
        if len(prompt_ids) != len(choices):
            raise ValueError(f"{len(prompt_ids)} prompts but {len(choices)} choices")
        groups: OrderedDict[str | None, list[int]] = OrderedDict()
        if any(c.expert is None for c in choices):
            groups[None] = []  # base first: pass 1 left the base weights active
        for i, c in enumerate(choices):
            groups.setdefault(None if c.expert is None else expert_key(c.expert), []).append(i)
        outs: list = [None] * len(choices)
        seconds = [0.0] * len(choices)
        switch_total = gen_total = 0.0
        try:
            for idx in groups.values():
                expert = choices[idx[0]].expert
                switch = self.rt.cache.activate(expert)
                t0 = time.perf_counter()
                group_outs = self.rt.engine.generate([prompt_ids[i] for i in idx], params)
                gen = time.perf_counter() - t0
                switch_total, gen_total = switch_total + switch, gen_total + gen
                for i, o in zip(idx, group_outs):
                    outs[i], seconds[i] = o, (switch + gen) / len(idx)
        finally:
            self.rt.cache.activate(None)
        totals = {"switch_seconds": switch_total, "generate_seconds": gen_total, "groups": len(groups)}
        return outs, seconds, totals

    def generate(self, prompts: Sequence[Conversation | str], params) -> list[AdaptiveResult]:
        """Both passes for plain prompts or chat conversations; results in input order."""
        convs = [as_conversation(p) for p in prompts]
        if not convs:
            return []
        choices, pass1 = self.choose(convs)
        ids = [chat_prompt_ids(self.rt.tokenizer, c) for c in convs]
        outs, seconds, totals = self.answer(ids, choices, params)
        self.last_timing = {"pass1_seconds": pass1, "pass2_seconds": totals["switch_seconds"] +
                            totals["generate_seconds"], **totals, "prompts": len(convs)}
        return [AdaptiveResult(expert=c.name, label=c.label, answer=o.text, pass1_seconds=pass1 / len(convs),
                               pass2_seconds=s, alpha=c.alpha, finish_reason=o.finish_reason,
                               tokens=len(o.token_ids), pass1=c.detail)
                for c, o, s in zip(choices, outs, seconds)]
