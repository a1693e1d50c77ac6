"""The cross-entropy method over mixing weights α (SPEC §4, few-shot adaptation), independent of any model.

    result = cem(fitness, shape=(K,), config=CEMConfig())      # fitness(alpha) -> Fitness

Each iteration samples `population` α from N(mean, std²) (independent per entry), clamps them to [0, 1]
(optionally normalises each column to sum to 1), evaluates them, and refits mean and std to the elite fraction.
Fitness is compared as (score, tiebreak): accuracy first, then (few-shot) the mean log-likelihood of the
member's own correct answers. Evaluations are cached by α, so the incumbent is "re-evaluated" for free when the
fitness is deterministic (greedy decoding).

Departures and choices (numbered):
1. Elitism: the best member so far is re-evaluated every iteration and competes for the elite (SPEC: "the best
   member re-evaluated each iteration"); with a deterministic fitness that is a cache lookup.
2. mean/std are fitted to the elites' clamped samples (before normalisation); std is floored at `min_std` so
   the search never freezes by accident.
3. Early stopping (all optional): `target` (stop once the best score reaches it, e.g. 1.0 = all shots right),
   `patience` (iterations without improvement), `stop_std` (largest std below it: converged).
4. Sampling is seeded per iteration (seed, iteration), so a run resumed from a checkpoint draws exactly what an
   uninterrupted run would; the checkpoint (mean, std, best, curve) is written atomically after each iteration.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from ..errors import T2Error
from ..fileio import atomic_write_json, read_json
from .config import CEMConfig


@dataclass(frozen=True, order=True)
class Fitness:
    """Compared as (score, tiebreak); higher is better."""

    score: float
    tiebreak: float = float("-inf")

    def to_json(self) -> dict:
        return {"score": self.score, "tiebreak": None if math.isinf(self.tiebreak) else self.tiebreak}

    @classmethod
    def from_json(cls, d: dict) -> "Fitness":
        return cls(float(d["score"]), float("-inf") if d.get("tiebreak") is None else float(d["tiebreak"]))


@dataclass
class CEMResult:
    alpha: torch.Tensor  # the best α found, shape as requested
    fitness: Fitness
    curve: list[dict]  # per iteration: best/mean score, std, evaluations, seconds
    evaluations: int  # distinct fitness evaluations (cache misses)
    iterations: int
    stopped: str  # "iterations" | "target" | "patience" | "converged"


def project(samples: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Clamped samples (P, K, ...) -> α: unchanged, or each column (over K) divided by its sum (uniform if 0)."""
    if not normalize:
        return samples
    total = samples.sum(1, keepdim=True)  # (P, 1, ...)
    uniform = torch.full_like(samples, 1.0 / samples.shape[1])
    return torch.where(total > 0, samples / total.clamp_min(1e-12), uniform)


def cem(fitness: Callable[[torch.Tensor], Fitness], shape: tuple[int, ...], config: CEMConfig = CEMConfig(), *,
        checkpoint: str | Path | None = None, resume: bool = False, progress: bool = False,
        fingerprint: dict | None = None) -> CEMResult:
    """Maximise `fitness` over α of `shape` (K,) or (K, M) with the cross-entropy method.

    `checkpoint`: a JSON file written after every iteration; with `resume`, a matching checkpoint (same search
    settings and `fingerprint`, e.g. the shots and experts; the stopping rules may differ, so a finished search
    can be extended with more iterations) is continued, a mismatching one refused.
    """
    K = shape[0]
    mean = torch.full(shape, config.init_mean if config.init_mean is not None else 1.0 / K)
    std = torch.full(shape, config.init_std)
    cache: dict[bytes, Fitness] = {}
    best_alpha, best_raw, best_fit = None, None, None
    curve: list[dict] = []
    start, since_gain, evaluations = 0, 0, 0
    # What must match to resume: everything but the stopping rules, so a finished search can be extended.
    search = {k: v for k, v in asdict(config).items() if k not in ("iterations", "target", "patience", "stop_std")}
    ident = {"config": search, "shape": list(shape), **(fingerprint or {})}
    ident = json.loads(json.dumps(ident, default=str))
    if checkpoint is not None and resume and Path(checkpoint).is_file():
        state = read_json(checkpoint, what="CEM checkpoint")  # a damaged file: one line, not a traceback
        if not isinstance(state, dict) or state.get("ident") != ident:
            raise T2Error(f"{checkpoint} holds a CEM run with another configuration; drop --resume or delete it")
        mean, std = torch.tensor(state["mean"]), torch.tensor(state["std"])
        best_alpha, best_raw = torch.tensor(state["best_alpha"]), torch.tensor(state["best_raw"])
        best_fit = Fitness.from_json(state["best_fitness"])
        cache[best_alpha.numpy().tobytes()] = best_fit
        curve, start, since_gain = state["curve"], state["iteration"], state["since_gain"]
        evaluations = state["evaluations"]

    def evaluate(alpha: torch.Tensor) -> Fitness:
        nonlocal evaluations
        key = alpha.numpy().tobytes()
        if key not in cache:
            cache[key] = fitness(alpha)
            evaluations += 1
        return cache[key]

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.iterations, initial=start, desc="CEM", unit="it")
    stopped = None
    try:
        for it in range(start, config.iterations):
            stopped = _stop_reason(config, best_fit, since_gain, std)
            if stopped:
                break
            t0 = time.perf_counter()
            gen = torch.Generator().manual_seed(config.seed * 1_000_003 + it)
            raw = (mean + std * torch.randn((config.population, *shape), generator=gen)).clamp(0.0, 1.0)
            alphas = project(raw, config.normalize)
            fits = [evaluate(a) for a in alphas]
            if best_alpha is not None:  # the incumbent competes again (cached when deterministic)
                raw = torch.cat([raw, best_raw[None]])
                alphas = torch.cat([alphas, best_alpha[None]])
                fits.append(evaluate(best_alpha))
            order = sorted(range(len(fits)), key=lambda i: fits[i], reverse=True)
            elite = raw[order[:config.n_elite]]
            mean = elite.mean(0)
            std = elite.std(0, unbiased=False).clamp_min(config.min_std)
            top = order[0]
            if best_fit is None or fits[top] > best_fit:
                best_alpha, best_raw, best_fit = alphas[top].clone(), raw[top].clone(), fits[top]
                since_gain = 0
            else:
                since_gain += 1
            scores = [f.score for f in fits]
            curve.append({"iteration": it + 1, "best": best_fit.score, "best_tiebreak": best_fit.to_json()["tiebreak"],
                          "population_best": max(scores), "population_mean": sum(scores) / len(scores),
                          "std_max": float(std.max()), "evaluations": evaluations,
                          "seconds": round(time.perf_counter() - t0, 3)})
            if checkpoint is not None:
                atomic_write_json(checkpoint, {
                    "ident": ident, "iteration": it + 1, "mean": mean.tolist(), "std": std.tolist(),
                    "best_alpha": best_alpha.tolist(), "best_raw": best_raw.tolist(),
                    "best_fitness": best_fit.to_json(), "curve": curve, "since_gain": since_gain,
                    "evaluations": evaluations})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(best=f"{best_fit.score:.3f}", mean=f"{curve[-1]['population_mean']:.3f}")
    finally:
        if bar is not None:
            bar.close()
    stopped = stopped or _stop_reason(config, best_fit, since_gain, std) or "iterations"
    return CEMResult(best_alpha, best_fit, curve, evaluations, len(curve), stopped)


def _stop_reason(config: CEMConfig, best: Fitness | None, since_gain: int, std: torch.Tensor) -> str | None:
    if best is None:
        return None
    if config.target is not None and best.score >= config.target:
        return "target"
    if config.patience is not None and since_gain >= config.patience:
        return "patience"
    if config.stop_std is not None and float(std.max()) < config.stop_std:
        return "converged"
    return None
