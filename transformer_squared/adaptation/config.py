"""The settings of few-shot adaptation (CEM over α) and of the router, apart from the code that uses them.

They import nothing heavy (no torch), so `t2 adapt` builds its command-line options from these dataclasses
(`cli.common.add_config_args`) while parsing stays fast; cem.py, fewshot.py and router.py use them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import T2Error

# How a dispatch/router prompt is written (dispatch.py): the benchmark's template, as a user types it, or both.
FORMS = ("template", "plain", "mixed")


@dataclass(frozen=True)
class CEMConfig:
    """The search; defaults are the paper's (SPEC §4) except iterations (code: 50, paper: up to 100)."""

    population: int = field(default=32, metadata={"help": "members sampled per iteration"})
    elite_frac: float = field(default=0.2, metadata={"help": "fraction of the population the distribution is refit to"})
    iterations: int = field(default=50, metadata={"help": "most iterations"})
    init_mean: float | None = field(default=None, metadata={"help": "start mean of every α (default 1/K)"})
    init_std: float = field(default=0.5, metadata={"help": "start standard deviation"})
    min_std: float = field(default=1e-3, metadata={"help": "floor on the std after each refit"})
    per_layer: bool = field(default=False, metadata={"help": "one α per expert per matrix instead of per expert"})
    normalize: bool = field(default=True, metadata={"help": "α of each matrix sums to 1 (else free in [0, 1])"})
    target: float | None = field(default=None, metadata={"help": "stop when the best score reaches this"})
    patience: int | None = field(default=None, metadata={"help": "stop after this many iterations without gain"})
    stop_std: float | None = field(default=None, metadata={"help": "stop when every std is below this"})
    seed: int = field(default=0, metadata={"help": "seed of the search's sampling"})

    def __post_init__(self):
        if self.population < 2:
            raise T2Error(f"CEM population must be at least 2, got {self.population}")
        if not 0 < self.elite_frac <= 1:
            raise T2Error(f"elite fraction must be in (0, 1], got {self.elite_frac}")
        if self.iterations < 1:
            raise T2Error(f"CEM iterations must be at least 1, got {self.iterations}")
        if self.init_std <= 0:
            raise T2Error(f"CEM init_std must be positive, got {self.init_std}")
        if self.patience is not None and self.patience < 1:
            raise T2Error(f"patience must be at least 1, got {self.patience}")

    @property
    def n_elite(self) -> int:
        return max(1, math.ceil(self.elite_frac * self.population))


@dataclass(frozen=True)
class FewShotConfig:
    """What to adapt on and how; `cem` is the search."""

    shots: int = field(default=10, metadata={"help": "prompts of the task used to search α (paper: 10)"})
    split: str | None = field(default=None, metadata={"help": "split the shots come from (default: the task's)"})
    seed: int = field(default=0, metadata={"help": "seed for drawing the shots (t2 adapt: and for the search)"})
    max_new_tokens: int | None = field(default=None, metadata={"help": "default: the task's own budget"})
    workers: int = field(default=2, metadata={"help": "parallel sandboxes for code tasks"})
    cem: CEMConfig = CEMConfig()

    def __post_init__(self):
        if self.shots < 1:
            raise T2Error(f"--shots must be at least 1, got {self.shots}")


@dataclass(frozen=True)
class RouterConfig:
    """How the router is fitted."""

    per_domain: int = field(default=64, metadata={"help": "training prompts per domain"})
    form: str = field(default="mixed", metadata={
        "choices": FORMS,
        "help": "how the fitting prompts are written: template (the benchmarks'), plain (as typed in a chat) or mixed"})
    layer: str | int = field(default="auto", metadata={"help": "hidden-state index (0 = embeddings) or 'auto'"})
    threshold_quantile: float = field(default=0.02, metadata={"help": "others below this quantile of in-domain "
                                                                      "similarity; 0 = never others"})
    holdout: float = field(default=0.25, metadata={"help": "fraction held out to pick the layer"})
    max_tokens: int = field(default=256, metadata={"help": "prompt tokens embedded (the rest is cut)"})
    batch_size: int = field(default=16, metadata={"help": "prompts embedded together"})
    seed: int = field(default=0, metadata={"help": "seed for the fitting prompts and the held-out split"})

    def __post_init__(self):
        if self.per_domain < 2:
            raise T2Error(f"the router needs at least 2 prompts per domain, got {self.per_domain}")
        if not 0 <= self.threshold_quantile < 1:
            raise T2Error(f"threshold_quantile must be in [0, 1), got {self.threshold_quantile}")
        if not 0 < self.holdout < 1:
            raise T2Error(f"holdout must be in (0, 1), got {self.holdout}")
        if self.form not in FORMS:
            raise T2Error(f"router form must be one of {', '.join(FORMS)}, got {self.form!r}")
        if self.layer != "auto" and not isinstance(self.layer, int):
            raise T2Error(f"router layer must be an integer or 'auto', got {self.layer!r}")
