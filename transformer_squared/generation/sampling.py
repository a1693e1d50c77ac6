"""Choosing the next token (greedy, temperature, top-p) and spotting stop strings."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .params import SamplingParams

# Top-p usually keeps a few dozen tokens: try the top 64 first and sort the whole vocabulary only when those
# 64 hold less than top_p of the mass in some row. Exact either way.
_TOP_P_FIRST_K = 64


def next_tokens(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """The next token of each row of `logits` (n, V): argmax when greedy, else a top-p sample. Returns (n,) long."""
    if params.greedy:
        return logits.argmax(-1)  # same tie-breaking (first max) as `model.generate`
    logits = logits.float() / params.temperature
    if params.top_p >= 1.0:
        probs = torch.softmax(logits, -1)
        return torch.multinomial(probs, 1, generator=generator)[:, 0]
    k = min(_TOP_P_FIRST_K, logits.shape[-1])
    vals, idx = logits.topk(k, -1)  # (n, k), sorted descending
    probs = torch.exp(vals - torch.logsumexp(logits, -1, keepdim=True))  # (n, k), normalised over the vocabulary
    cum = probs.cumsum(-1)
    if k < logits.shape[-1] and bool((cum[:, -1] < params.top_p).any()):
        vals, idx = logits.sort(-1, descending=True)  # (n, V)
        probs = torch.softmax(vals, -1)
        cum = probs.cumsum(-1)
    # Keep a token while the mass before it is below top_p: the smallest set reaching top_p (never empty).
    probs = probs.masked_fill(cum - probs >= params.top_p, 0.0)
    choice = torch.multinomial(probs, 1, generator=generator)  # (n, 1); multinomial renormalises
    return idx.gather(-1, choice)[:, 0]


def sampled_logprobs(logits: torch.Tensor, tokens: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """log-prob of each row's chosen token under the distribution `next_tokens` drew it from with `params`:
    softmax(logits / T) restricted to the same nucleus and renormalised; greedy rows (no distribution) get
    log softmax(logits) at T = 1, what RL scores greedy rollouts with. logits (n, V), tokens (n,) → (n,) fp32.
    (`SamplingParams.logprobs`: for importance weights between a low-precision rollout and an exact forward.)"""
    z = logits.float() if params.greedy else logits.float() / params.temperature  # (n, V)
    lse = torch.logsumexp(z, -1)  # (n,)
    tok = z.gather(-1, tokens[:, None])[:, 0] - lse  # (n,) log-prob over the whole vocabulary
    if params.greedy or params.top_p >= 1.0:
        return tok
    # The nucleus exactly as `next_tokens` builds it (the same ops on the same logits)
    k = min(_TOP_P_FIRST_K, z.shape[-1])
    vals = z.topk(k, -1).values  # (n, k)
    probs = torch.exp(vals - lse[:, None])
    cum = probs.cumsum(-1)
    if k < z.shape[-1] and bool((cum[:, -1] < params.top_p).any()):
        probs = torch.softmax(z.sort(-1, descending=True).values, -1)  # (n, V)
        cum = probs.cumsum(-1)
    kept = probs.masked_fill(cum - probs >= params.top_p, 0.0).sum(-1)  # (n,) the nucleus's mass
    return tok - kept.log()


class StopStrings:
    """Checks the tail of each row's generated ids for stop strings, decoding only the last few tokens."""

    def __init__(self, tokenizer, stop: Sequence[str]):
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        # A token decodes to at least one character, or to part of one (byte fallback: up to 4 tokens per char).
        self.window = 4 * max((len(s) for s in self.stop), default=0) + 2

    def __bool__(self) -> bool:
        return bool(self.stop)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def first_stop(self, text: str) -> int:
        """Index of the first stop string in `text`, or -1."""
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return min(hits) if hits else -1

    def hits(self, rows: Sequence[Sequence[int]]) -> list[bool]:
        """Whether each row of generated ids contains a stop string (tail check, confirmed on the full text)."""
        tails = [list(r[-self.window:]) for r in rows]
        texts = self.tokenizer.batch_decode(tails, skip_special_tokens=False)
        out = []
        for row, text in zip(rows, texts):
            # The tail text can differ from the full text at its start (a split character, a dropped leading
            # space), so a tail hit is confirmed on the full decode; hits are rare, so this stays cheap.
            out.append(any(s in text for s in self.stop) and self.first_stop(self.decode(row)) >= 0)
        return out

    def shortest_prefix(self, ids: Sequence[int]) -> int:
        """Fewest leading tokens of `ids` whose text contains a stop string (`ids` must contain one)."""
        ids = list(ids)
        if self.first_stop(self.decode(ids[:-1])) < 0:  # the usual case: the last token completed it
            return len(ids)
        lo, hi = 1, len(ids) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if self.first_stop(self.decode(ids[:mid])) >= 0:
                hi = mid
            else:
                lo = mid + 1
        return lo
