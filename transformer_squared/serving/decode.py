"""One batch of requests decoded together, each row with its own sampling params, limits, stream and cancel flag.

`Engine.generate` (generation/engine.py) decodes a list of prompts with *one* SamplingParams and returns when
the batch is done. A server needs more per row: its own max_tokens, temperature, top_p, stop strings and seed;
text deltas as tokens come (streaming); and dropping a row whose client went away. So this is the engine's
decode loop with per-row state, built from the same pieces: the runners (`fast_llama.LlamaRunner` /
`hf_runner.HFRunner`: prefill, one-token steps, `keep` to drop rows), `sampling.next_tokens` and
`sampling.StopStrings`. Greedy output equals `Engine.generate`'s (tests/serving/test_decode.py checks it).

Per-row state that lives outside the runner (per-row SVF z) follows the rows through `on_reindex(keep)`, with
the engine's meaning: `keep` holds the positions, among the rows of the previous forward pass, of the rows that
remain, in order (`SVF.select_rows` takes exactly that).

Departures from `Engine.generate`:
1. A row seeded by its request samples from its own generator, so a seeded request gets the same tokens
   whatever else shares its batch (the engine seeds one generator per call).
2. Rows finish at their own max_tokens; a cancelled row finishes with reason "cancelled" and is dropped at once.
3. `token_ids` are kept as sampled (a stop string's tail is not trimmed from the ids); `text` is cut before the
   first stop string as in the engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..generation.engine import drop_rows
from ..generation.fast_llama import LlamaRunner, fast_path_problem
from ..generation.hf_runner import HFRunner
from ..generation.packed import packed_linears
from ..generation.params import SamplingParams
from ..generation.sampling import StopStrings, next_tokens

# As in the engine: dropping a row copies the KV cache of the rows behind it, not worth it near the end.
_MIN_STEPS_LEFT_TO_COMPACT = 4


@dataclass
class Row:
    """One request's sequence in a batch: inputs, callbacks, and (filled by `decode`) its output."""

    prompt_ids: list[int]
    params: SamplingParams
    on_text: Callable[[str], None] | None = None  # streaming: called with each new piece of text
    cancelled: Callable[[], bool] = lambda: False
    on_done: Callable[["Row"], None] | None = None  # called once, as soon as the row finishes
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None  # "stop" | "length" | "cancelled"
    _sent: int = 0  # characters of text already passed to on_text
    _stops: StopStrings | None = None
    _gen: torch.Generator | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


@dataclass
class BatchStats:
    rows: int = 0
    steps: int = 0
    new_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0


def make_runner(engine, max_len: int):
    """The engine's choice of forward: the Llama fast path where it applies (and is not turned off), else HF."""
    if getattr(engine, "runner", "auto") != "hf" and fast_path_problem(engine.model, max_len) is None:
        return LlamaRunner(engine.model, fuse_weights=getattr(engine, "pack_weights", False))
    return HFRunner(engine.model)


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters of unfinished `text` must not be streamed yet: an incomplete UTF-8
    character (decoded as U+FFFD) or the start of a stop string."""
    n = 0
    while n < len(text) and text[len(text) - 1 - n] == "\ufffd":
        n += 1
    body = text[: len(text) - n]
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(body)), hold, -1):
            if body.endswith(s[:k]):
                hold = k
                break
    return n + hold


class _Decoder:
    def __init__(self, engine, rows: list[Row]):
        self.engine, self.rows = engine, rows
        self.tokenizer = engine.tokenizer
        self.eos = engine.eos
        for r in rows:
            r._stops = StopStrings(self.tokenizer, r.params.stop) if r.params.stop else None
            if r.params.seed is not None and not r.params.greedy:
                r._gen = torch.Generator(device=engine.device).manual_seed(r.params.seed)

    def decode_text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def sample(self, logits: torch.Tensor, running: list[int]) -> torch.Tensor:
        """Next token of every running row (n,): one argmax for the greedy rows, one draw per sampled row."""
        rows = [self.rows[i] for i in running]
        greedy = [p for p, r in enumerate(rows) if r.params.greedy]
        if len(greedy) == len(rows):
            return logits.argmax(-1)
        tokens = torch.empty(len(rows), dtype=torch.long, device=logits.device)
        if greedy:
            idx = torch.tensor(greedy, device=logits.device)
            tokens[idx] = logits[idx].argmax(-1)
        for p, r in enumerate(rows):
            if not r.params.greedy:
                tokens[p] = next_tokens(logits[p : p + 1], r.params, r._gen)[0]
        return tokens

    def advance(self, row: Row, token: int) -> None:
        """Append one sampled token; decide whether the row is finished; stream the text that is final."""
        row.token_ids.append(token)
        if token in self.eos:
            row.finish_reason = "stop"
        elif len(row.token_ids) >= row.params.max_new_tokens:
            row.finish_reason = "length"
        if self.tokenizer is None or (row.on_text is None and row._stops is None and not row.done):
            return  # nothing to look at before the end
        body = row.token_ids[:-1] if row.finish_reason == "stop" else row.token_ids
        text = self.decode_text(body)
        if row._stops is not None and (cut := row._stops.first_stop(text)) >= 0:
            text, row.finish_reason = text[:cut], "stop"
        if row.done:
            row.text = text
            ready = len(text)
        else:
            ready = len(text) - _held_back(text, row.params.stop)
        if row.on_text is not None and ready > row._sent:
            row.on_text(text[row._sent : ready])
            row._sent = ready


@torch.no_grad()
def decode(engine, rows: list[Row], *, on_reindex: Callable[[torch.LongTensor], None] | None = None) -> BatchStats:
    """Generate every row to its end (EOS, stop string, its max_tokens, or cancellation), in one batch.

    `engine` is a `generation.Engine` (its model, tokenizer, EOS ids, pad id and device are used). Rows are
    filled in place; returns timings.
    """
    stats = BatchStats(rows=len(rows))
    dec = _Decoder(engine, rows)
    B, T = len(rows), max(len(r.prompt_ids) for r in rows)
    steps = max(r.params.max_new_tokens for r in rows)
    input_ids = torch.full((B, T), engine.pad_id, dtype=torch.long)  # (B, T), left-padded
    mask = torch.zeros(B, T, dtype=torch.long)
    for b, r in enumerate(rows):
        input_ids[b, T - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
        mask[b, T - len(r.prompt_ids) :] = 1
    device = engine.device
    was_training = engine.model.training
    engine.model.eval()
    try:
        with packed_linears(engine.model, getattr(engine, "pack_weights", False)):
            t0 = time.perf_counter()
            runner = make_runner(engine, T + steps)
            logits = runner.start(input_ids.to(device), mask.to(device), steps)  # (B, V)
            running = list(range(B))  # row index of each position of the running batch
            for step in range(steps):
                tokens = dec.sample(logits, running)  # (n,)
                for pos, tok in enumerate(tokens.tolist()):
                    row = rows[running[pos]]
                    if row.done:  # finished earlier but not dropped (runner cannot drop rows): ignore
                        continue
                    dec.advance(row, tok)
                    if not row.done and row.cancelled():
                        row.finish_reason = "cancelled"
                    if row.done and row.on_done is not None:
                        row.on_done(row)
                t1 = time.perf_counter()
                if step == 0:
                    stats.prefill_s += t1 - t0
                else:
                    stats.decode_s += t1 - t0
                t0, stats.steps = t1, step + 1
                live = [pos for pos, i in enumerate(running) if not rows[i].done]
                if not live:
                    break
                left = max(rows[running[p]].params.max_new_tokens - len(rows[running[p]].token_ids) for p in live)
                cancelled = any(rows[i].finish_reason == "cancelled" for i in running)
                drop = len(live) < len(running) and (left >= _MIN_STEPS_LEFT_TO_COMPACT or cancelled)
                if drop and getattr(runner, "can_drop_rows", True):
                    tokens = drop_rows(runner, live, tokens, on_reindex)
                    running = [running[p] for p in live]
                logits = runner.step(tokens)
    finally:
        engine.model.train(was_training)
    stats.new_tokens = sum(len(r.token_ids) for r in rows)
    return stats
