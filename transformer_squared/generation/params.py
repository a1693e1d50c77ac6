"""What to generate (`SamplingParams`), what came out (`Completion`) and where the time went (`GenerationStats`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import T2Error


@dataclass(frozen=True)
class SamplingParams:
    """How to decode. Validated on construction; a bad value raises `T2Error`."""

    max_new_tokens: int = field(default=256, metadata={"help": "most tokens generated per prompt"})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy (argmax); > 0 samples softmax(logits / T)"})
    top_p: float = field(default=1.0, metadata={
        "help": "nucleus sampling: keep the smallest top set with mass >= top_p"})
    stop: tuple[str, ...] = field(default=(), metadata={"help": "stop strings; the text is cut before the first one"})
    seed: int | None = field(default=None, metadata={
        "help": "Engine.generate: same seed + same prompts + same batch size = same outputs; a row added to a "
                "RunningBatch with a seed draws from its own generator, whatever else shares its batch"})
    logprobs: bool = field(default=False, metadata={
        "help": "fill Completion.token_logprobs: each sampled token's log-prob under the distribution it was "
                "drawn from (temperature, top-p; greedy: T = 1), as the engine computed it"})

    def __post_init__(self):
        if isinstance(self.stop, str):  # a lone string is a common slip: treat it as one stop string
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise T2Error(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise T2Error(f"temperature must be >= 0 (0 = greedy), got {self.temperature!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise T2Error(f"top_p must be in (0, 1], got {self.top_p!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise T2Error(f"stop strings must be non-empty strings, got {self.stop!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class Completion:
    """One generated continuation.

    `token_ids` are exactly the sampled ids, so RL can recompute their log-probs: they include the final EOS
    token when generation ended on EOS, and all tokens of a stop string up to the one that completed it (the
    stop string's text may end inside that token). `text` is the decoded continuation without the final EOS and
    cut before the first stop string, so `text` can be shorter than `decode(token_ids)`.
    """

    text: str
    token_ids: list[int]
    finish_reason: str  # "stop": EOS or a stop string; "length": max_new_tokens reached
    prompt_tokens: int
    token_logprobs: list[float] | None = None  # per token of `token_ids` (SamplingParams.logprobs), else None


@dataclass
class GenerationStats:
    """Where the time of the last `generate` call went (for benchmarks and logs)."""

    prompts: int = 0
    batches: int = 0  # times waiting prompts were added to the running batch (static batches: one per batch)
    new_tokens: int = 0
    prefill_rows: int = 0  # prompts actually run through prefill (repeats of a prompt share one)
    prefill_s: float = 0.0  # prompt forward passes, incl. the first token's logits
    decode_s: float = 0.0  # one-token steps, incl. sampling and stop checks
    step_rows: list[int] = field(default_factory=list)  # rows computed in each step
    step_s: list[float] = field(default_factory=list)  # seconds of each step

    @property
    def tokens_per_s(self) -> float:
        total = self.prefill_s + self.decode_s
        return self.new_tokens / total if total > 0 else 0.0
