"""Few-shot adaptation (SPEC §4): search α for z' = Σ_k α_k z_k on a few prompts of a new task, with CEM.

    expert = adapt_fewshot(am, experts, get_task("math500"), FewShotConfig(shots=10), data_dir=...)
    expert.save("adapted/math500")               # mixed z, α, CEM config, fitness curve, shot ids
    t2 eval --task math500 --expert adapted/math500   # evaluates on the held-out remainder automatically

The shots are `shots` examples drawn (seeded) from the task's split; the rest of the split is what evaluation
must use, so the expert records the shot ids (`meta["fewshot"]["shot_ids"]`) and `heldout_task` drops them
(`t2 eval` does it by itself for an expert with such metadata). A member's fitness is its accuracy on the shots
with greedy decoding; ties are broken by the mean, over the shots it answers correctly, of its answer's mean
per-token log-likelihood under the mixed weights. Mixed weights come from the merged-weight cache as
Σ_k α_k W'_k (no recomposition, cache.py), so one evaluation costs a few axpys plus generating the shots.

Departures (numbered):
1. α is normalised by default (each matrix's α sums to 1): this library mixes effective z linearly without the
   reference code's nuclear-norm rescale, so a free α also rescales every singular value; `normalize=False`
   gives the free variant.
2. "Per-layer" α is one α per expert per adapted *matrix* ((K, M)), the finest granularity SPEC §4 allows.
"""

from __future__ import annotations

import inspect
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import torch

from ..errors import T2Error
from ..evaluation import generate_and_score, sampling_params
from ..experts import Expert, mix
from ..tasks import prompt_ids
from ..tasks.base import Example, Task
from .cache import expert_key
from .cem import CEMResult, Fitness, cem
from .config import CEMConfig, FewShotConfig
from .strategy import Choice, Conversation

ROLE = "fewshot"


def draw_shots(examples: Sequence[Example], shots: int, seed: int) -> list[Example]:
    """`shots` examples drawn with `seed`, in split order."""
    if shots >= len(examples):
        raise T2Error(f"the split has {len(examples)} examples; few-shot adaptation needs more than --shots "
                      f"{shots} so that some remain for evaluation")
    keep = set(random.Random(f"fewshot/{seed}").sample(range(len(examples)), shots))
    return [ex for i, ex in enumerate(examples) if i in keep]


class HeldOut(Task):
    """A task without some example ids (the shots a few-shot expert was adapted on)."""

    def __init__(self, task: Task, exclude: Sequence[str]):
        self.inner, self.exclude = task, frozenset(exclude)
        for attr in ("name", "domain", "splits", "default_split", "max_new_tokens", "stop"):
            setattr(self, attr, getattr(task, attr))

    def load(self, split=None, data_dir=None):
        return [ex for ex in self.inner.load(split, data_dir) if ex.id not in self.exclude]

    def messages(self, example):
        return self.inner.messages(example)

    def score(self, example, output):
        return self.inner.score(example, output)

    def score_many(self, examples, outputs, *, workers: int = 2):
        return self.inner.score_many(examples, outputs, workers=workers)

    def response_prefix(self, example):
        return self.inner.response_prefix(example)


def shot_ids(expert: Expert, task_name: str) -> list[str]:
    """The ids a few-shot expert was adapted on, if it was adapted on `task_name` (else none)."""
    info = expert.meta.get("fewshot") or {}
    return list(info.get("shot_ids", [])) if info.get("task") == task_name else []


def heldout_task(task: Task, expert: Expert | None) -> Task:
    """`task` minus the shots `expert` was adapted on (the task itself when there are none)."""
    ids = shot_ids(expert, task.name) if expert is not None else []
    return HeldOut(task, ids) if ids else task


class ShotFitness:
    """fitness(α): accuracy of the α-mixture on the shots, tie-broken by its correct answers' log-likelihood."""

    def __init__(self, runtime, experts: Sequence[Expert], task: Task, shots: Sequence[Example], params,
                 workers: int = 2):
        self.rt, self.experts, self.task, self.shots = runtime, list(experts), task, list(shots)
        self.params, self.workers = params, workers
        # the prompts t2 eval gives the model (response prefix included), for the log-likelihood tie-break
        self.ids = [prompt_ids(task, runtime.tokenizer, ex) for ex in self.shots]

    def __call__(self, alpha: torch.Tensor) -> Fitness:
        self.rt.cache.activate_mix(self.experts, alpha)
        # evaluation's generate -> score path: a shot is right here exactly when t2 eval would count it right
        scored = generate_and_score(self.rt.engine, self.rt.tokenizer, self.task, self.shots, self.params,
                                    workers=self.workers)
        outs, verdicts = scored.outputs, scored.verdicts
        right = [i for i, v in enumerate(verdicts) if v.correct]
        acc = len(right) / len(self.shots)
        if not right:
            return Fitness(acc)
        lls = mean_token_loglik(self.rt.model, [self.ids[i] for i in right], [outs[i].token_ids for i in right])
        return Fitness(acc, sum(lls) / len(lls))


@torch.no_grad()
def mean_token_loglik(model, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]]) -> list[float]:
    """Mean log-probability per completion token of each completion given its prompt (current weights).

    One row at a time, keeping only the completion's logits: a batch of full (B, T, V) logits would take
    gigabytes for a 49k-token vocabulary."""
    device = next(model.parameters()).device
    keep = "logits_to_keep" in inspect.signature(model.forward).parameters
    out = []
    for p, c in zip(prompts, completions):
        if not c:
            out.append(float("-inf"))
            continue
        ids = torch.tensor([list(p) + list(c)], device=device)  # (1, T)
        kw = {"logits_to_keep": len(c) + 1} if keep else {}
        logits = model(input_ids=ids, use_cache=False, **kw).logits[0, -(len(c) + 1):-1].float()  # (len(c), V)
        logp = torch.log_softmax(logits, -1).gather(-1, ids[0, -len(c):, None])[:, 0]  # (len(c),)
        out.append(float(logp.mean()))
    return out


def adapt_fewshot(runtime, task: Task, config: FewShotConfig = FewShotConfig(), *, data_dir=None,
                  checkpoint: str | Path | None = None, resume: bool = False, progress: bool = False,
                  name: str | None = None) -> tuple[Expert, CEMResult]:
    """Search α over the runtime's domain experts on `shots` prompts of `task`; returns (mixed expert, result)."""
    t0 = time.perf_counter()
    domains = runtime.experts.domains
    experts = [runtime.experts.experts[d] for d in domains]
    split = config.split or task.default_split
    examples = task.load(split, data_dir)
    shots = draw_shots(examples, config.shots, config.seed)
    params = sampling_params(task, config.max_new_tokens)
    fitness = ShotFitness(runtime, experts, task, shots, params, workers=config.workers)
    M = len(experts[0].z)
    shape = (len(experts), M) if config.cem.per_layer else (len(experts),)
    ident = {"task": task.name, "split": split, "shot_ids": [ex.id for ex in shots],
             "experts": [expert_key(e) for e in experts], "model": runtime.am.fingerprint,
             "max_new_tokens": params.max_new_tokens}
    try:
        result = cem(fitness, shape, config.cem, checkpoint=checkpoint, resume=resume, progress=progress,
                     fingerprint=ident)
    finally:
        runtime.cache.activate(None)
    names = [runtime.experts.names[d] for d in domains]
    alpha = result.alpha if result.alpha.dim() == 2 else result.alpha.tolist()
    info = {"task": task.name, "split": split, "shots": config.shots, "shot_ids": ident["shot_ids"],
            "heldout": len(examples) - len(shots), "experts": names, "domains": domains,
            "config": asdict(config), "fitness": result.fitness.to_json(), "curve": result.curve,
            "evaluations": result.evaluations, "iterations": result.iterations, "stopped": result.stopped,
            "seconds": round(time.perf_counter() - t0, 3)}
    expert = mix(experts, alpha, name=name or f"fewshot-{task.name}", role=ROLE, task=task.name, fewshot=info)
    expert.meta["mixed_from"] = names
    return expert, result


class FewShotStrategy:
    """Pass 1 at inference is free: the task's α was searched once (adapt_fewshot); every prompt uses it."""

    name = "fewshot"

    def __init__(self, runtime, expert: Expert):
        self.rt, self.expert = runtime, expert

    def choose(self, conversations: Sequence[Conversation]) -> list[Choice]:
        alpha = self.expert.meta.get("alpha")
        return [Choice(self.expert, self.expert.name, self.expert.name, alpha) for _ in conversations]
