"""The one decode loop: a running batch that rows join and leave between steps.

    with engine.batch() as batch:                    # eval mode, packed weights, no gradients, a KV cache
        a = batch.add(prompt_ids, SamplingParams(max_new_tokens=64, stop=("\\n\\n",)), on_text=print)
        while batch:                                  # rows running or waiting to join
            for row in batch.step():                  # one token for every running row
                print(row.finish_reason, row.text)    # the rows that finished in this step
            b = batch.add(other_ids, params)          # rows join between steps (prefilled at the next one)
        batch.cancel(a)                               # a row leaves at the next step, reason "cancelled"

`Engine.generate` (and so evaluation and RL rollouts) adds prompts whenever a quarter of the batch is free and
steps until all are done; the server (serving/scheduler.py) adds requests as they arrive. Each row has its own
`SamplingParams` (max_new_tokens, temperature, top_p, stop strings, seed), an opaque `state` (the server's: the
row's expert; `Engine.generate`'s: the prompt's position) and an optional `on_text` for streaming.

A step: rows cancelled or finished leave the runner's cache (unless only a few steps are left and no row waits
to join: the copy would cost more than computing them); the running rows take one decoding step; the rows
waiting to join are prefilled apart and appended to the running cache (`LlamaRunner.join`; the generic HF
runner takes new rows only when the batch is empty); one token is chosen for every row; rows that hit EOS, a
stop string or their max_new_tokens finish. Greedy ids of a row equal its ids decoded alone, whichever rows
share or join its batch, up to float rounding (padding and batch shape change the last bits).

Per-row state outside the runner (per-row SVF z) follows the rows through two callbacks, called before a
forward pass whose rows differ from the previous pass's:
- `on_reindex(keep)` when rows only left: `keep` (LongTensor, ascending) holds the positions, among the rows of
  the previous pass, of the rows that remain (`SVF.select_rows` takes exactly that);
- `on_rows(states)` otherwise (the first pass, newcomers' prefill, the step after a join, or after
  `reset_rows()`): `states` lists the `state` of each row of the pass, in order (`SVF.set_rows` for z).

Sampling: greedy rows share one argmax; sampled rows with the same temperature, top-p and generator are drawn
together (`Engine.generate` shares one generator per call, as before); a row added with a `seed` and no
generator gets its own, so its tokens do not depend on the rest of the batch. A row whose params ask for
`logprobs` also records each chosen token's log-prob under the distribution it was drawn from
(`sampling.sampled_logprobs`; RL weighs its low-precision rollouts by them).

Text: rows with stop strings or `on_text` are detokenised incrementally (detokenize.py: two short decodes per
step, whatever the length); a stop string is looked for in the new text and the stop's length before it.
`on_text` gets only the new text, never the start of a possible stop string nor a split character; the
finished text (decoded once in full, cut before the first stop string) completes it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..errors import T2Error
from .detokenize import IncrementalText, held_back
from .cpu_kernels import cpu_kernels
from .packed import packed_linears
from .params import Completion, GenerationStats, SamplingParams
from .sampling import StopStrings, next_tokens, sampled_logprobs

if TYPE_CHECKING:
    from .engine import Engine

# Dropping a finished row copies the KV cache of the rows behind it; skip it when so few steps are left that
# the copy costs more than computing the dead rows would.
_MIN_STEPS_LEFT_TO_COMPACT = 4


def _argmax(logits: torch.Tensor) -> torch.Tensor:
    """`logits.argmax(-1)` (n, V) -> (n,), through the CPU kernel where it runs (cpu_kernels.py: the same ids,
    first maximum, nan as the largest; ~7x faster than torch's at 64 x 49152, ~1% of a batch-64 step)."""
    if logits.device.type == "cpu" and logits.dtype == torch.float32 and logits.dim() == 2 \
            and logits.stride(-1) == 1 and logits.shape[-1] > 0:
        ops = cpu_kernels()
        if ops is not None:
            return ops.argmax_rows(logits)
    return logits.argmax(-1)


@dataclass(eq=False)  # rows are compared by identity
class Row:
    """One sequence of a running batch: what to generate, and (filled as it runs) what came out."""

    prompt_ids: list[int]
    params: SamplingParams
    state: Any = None  # passed to `on_rows` (the server: the row's expert)
    on_text: Callable[[str], None] | None = None  # streaming: called with each new piece of text
    generator: torch.Generator | None = None
    token_ids: list[int] = field(default_factory=list)
    token_logprobs: list[float] | None = None  # with params.logprobs: one per token of token_ids
    text: str = ""  # set when the row finishes
    finish_reason: str | None = None  # "stop" (EOS or a stop string) | "length" | "cancelled"
    _text: IncrementalText | None = None
    _stops: StopStrings | None = None
    _sent: str = ""  # text passed to on_text so far
    _cancel: bool = False

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def completion(self) -> Completion:
        """The finished row as a `Completion`."""
        return Completion(text=self.text, token_ids=self.token_ids, finish_reason=self.finish_reason or "length",
                          prompt_tokens=len(self.prompt_ids), token_logprobs=self.token_logprobs)


class RunningBatch:
    """Rows decoded together; rows join and leave between steps. Make one with `Engine.batch` and use it in a
    `with` block (see the module docstring)."""

    def __init__(self, engine: Engine, stats: GenerationStats | None = None, *, capacity: int | None = None,
                 on_rows: Callable[[list], None] | None = None,
                 on_reindex: Callable[[torch.LongTensor], None] | None = None, share_prefill: bool | None = None):
        """`stats`: where to add the timings (`Engine.generate` passes its own, with a list entry per step);
        without, the batch keeps totals only in `self.stats` (a server's batch runs for as long as it serves)."""
        self.engine = engine
        self._per_step = stats is not None
        self.stats = stats if stats is not None else GenerationStats()
        self.capacity = capacity or engine.max_batch_size
        self.on_rows, self.on_reindex = on_rows, on_reindex
        # Without per-row state, a prompt repeated among newcomers is prefilled once and the prefill runs in
        # groups of similar length (rows may differ once per-row state exists).
        self.share = (on_rows is None and on_reindex is None) if share_prefill is None else share_prefill
        self.running: list[Row] = []  # row i of the runner's cache; finished rows may ride along until dropped
        self.pending: list[Row] = []  # waiting to join
        self._next: torch.Tensor | None = None  # (len(running),) the token each running row feeds next
        self._runner = None
        self._pass_rows: list[Row] | None = None  # the rows of the last forward pass, for the callbacks
        self._open = False
        self._stack = contextlib.ExitStack()

    # -- lifecycle -----------------------------------------------------------------------------------------
    def __enter__(self) -> RunningBatch:
        model = self.engine.model
        self._stack.callback(model.train, model.training)  # restored last
        model.eval()
        self._stack.enter_context(packed_linears(model, self.engine.pack_weights,
                                                 precision=getattr(self.engine, "compute_precision", "exact")))
        self._open = True
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Free the KV cache and restore the model's mode; rows still running are left unfinished."""
        if self._runner is not None:
            self._runner.release()
        self._runner = None
        self._stack.close()
        self._open = False

    def __len__(self) -> int:
        """Rows running or waiting to join (finished rows not counted)."""
        return sum(not r.done for r in self.running) + len(self.pending)

    # -- rows ----------------------------------------------------------------------------------------------
    def add(self, prompt: Sequence[int] | str, params: SamplingParams, *, state: Any = None,
            on_text: Callable[[str], None] | None = None, generator: torch.Generator | None = None) -> Row:
        """Queue a row (token ids or already-formatted text); it joins at the next `step`. A sampled row with a
        `seed` and no `generator` gets its own generator. Returns the row (filled as it runs)."""
        engine = self.engine
        if (params.stop or on_text is not None) and engine.tokenizer is None:
            raise T2Error("stop strings and streamed text need a tokenizer; pass one to Engine")
        if generator is None and params.seed is not None and not params.greedy:
            generator = torch.Generator(device=engine.device).manual_seed(params.seed)
        row = Row(engine.encode(prompt), params, state=state, on_text=on_text, generator=generator,
                  token_logprobs=[] if params.logprobs else None)
        if params.stop or on_text is not None:
            row._text = IncrementalText(engine.tokenizer)
        if params.stop:
            row._stops = StopStrings(engine.tokenizer, params.stop)
        self.pending.append(row)
        return row

    @property
    def can_join(self) -> bool:
        """Whether rows added now can join the running rows (the generic HF runner takes rows only into an empty
        batch)."""
        return self._runner is None or not self.running or self._runner.can_join

    def cancel(self, row: Row) -> None:
        """Finish `row` with reason "cancelled" at the next step (it leaves the cache then). Idempotent."""
        row._cancel = True

    def reset_rows(self) -> None:
        """Call `on_rows` before the next forward pass even if its rows are unchanged (the caller replaced the
        per-row state, e.g. switched the weights)."""
        self._pass_rows = None

    # -- the loop ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self) -> list[Row]:
        """Cancel, drop, decode one token for every running row, prefill newcomers. Returns the rows that
        finished in this step (cancelled ones included)."""
        if not self._open:
            raise T2Error("a RunningBatch steps inside its `with` block: `with engine.batch() as batch: ...`")
        finished = []
        for row in self.pending + self.running:
            if row._cancel and not row.done:
                row.finish_reason = "cancelled"
                finished.append(row)
        self.pending = [r for r in self.pending if not r.done]
        if not any(not r.done for r in self.running):  # nothing left running: start afresh
            self.running, self._next = [], None
            if self._runner is not None:
                self._runner.release()
        else:
            self._drop(force=bool(finished) or bool(self.pending))
        stats = self.stats
        t0 = time.perf_counter()
        old = len(self.running)
        logits = []
        if old:
            self._before_pass(self.running)
            logits.append(self._runner.step(self._next))  # (old, V)
        t1 = time.perf_counter()
        joined = self._join()
        if joined is not None:
            logits.append(joined)  # (new, V)
        t2 = time.perf_counter()
        if not logits:
            return finished
        logits = torch.cat(logits) if len(logits) > 1 else logits[0]  # (n, V), rows in `running` order
        tokens = self._sample(logits)
        logps = self._logprobs(logits, tokens)
        for p, (row, tok) in enumerate(zip(self.running, tokens.tolist())):
            if not row.done:
                if row.token_logprobs is not None:
                    row.token_logprobs.append(logps[p])
                self._advance(row, tok)
                stats.new_tokens += 1
                if row.done:
                    finished.append(row)
        self._next = tokens
        t3 = time.perf_counter()
        if old:
            stats.decode_s += t1 - t0 + t3 - t2
            if self._per_step:
                stats.step_rows.append(old)
                stats.step_s.append(t1 - t0 + t3 - t2)
        else:
            stats.prefill_s += t3 - t1
        if joined is not None and old:
            stats.prefill_s += t2 - t1
        return finished

    def _before_pass(self, rows: list[Row]) -> None:
        """Tell the per-row state which rows the next forward pass computes (see the module docstring)."""
        prev = self._pass_rows
        if prev is not None and len(rows) == len(prev) and all(a is b for a, b in zip(rows, prev)):
            return
        if prev is not None and self.on_reindex is not None:
            where = {id(r): i for i, r in enumerate(prev)}
            keep = [where.get(id(r), -1) for r in rows]
            if -1 not in keep and keep == sorted(keep):  # only rows leaving
                self.on_reindex(torch.tensor(keep, dtype=torch.long))
                self._pass_rows = list(rows)
                return
        if self.on_rows is not None:
            self.on_rows([r.state for r in rows])
        self._pass_rows = list(rows)

    def _drop(self, force: bool) -> None:
        """Drop finished rows from the cache (see `_MIN_STEPS_LEFT_TO_COMPACT`; `force`: newcomers wait or a row
        was cancelled)."""
        live = [p for p, r in enumerate(self.running) if not r.done]
        if len(live) == len(self.running) or not self._runner.can_drop_rows:
            return
        left = max(self.running[p].params.max_new_tokens - len(self.running[p].token_ids) for p in live)
        if left < _MIN_STEPS_LEFT_TO_COMPACT and not force:
            return
        keep = torch.tensor(live, dtype=torch.long, device=self._next.device)
        self._runner.keep(keep)
        self._next = self._next[keep]
        self.running = [self.running[p] for p in live]

    def _join(self) -> torch.Tensor | None:
        """Prefill the waiting rows into the running batch; their first logits (G, V), or None if none joined."""
        if not self.pending:
            return None
        engine = self.engine
        new = self.pending
        need = max(len(r.prompt_ids) + r.params.max_new_tokens for r in new)
        if self.running:
            if not self._runner.can_join:
                return None  # (the HF runner) they start when the running rows have finished
            need = max(need, int(self._runner.pos.max()) + self._steps_left())
            if not engine.runner_fits(self._runner, need):
                return None  # e.g. past a sliding window: they start when the running rows have finished
        else:
            self._runner = engine.new_runner(need)
        self.pending = []
        repeat = None
        if self.share:  # one prefill per distinct prompt; repeats adjacent, first occurrences in order
            first: dict[tuple[int, ...], int] = {}
            index = [first.setdefault(tuple(r.prompt_ids), len(first)) for r in new]
            if len(first) < len(new):
                order = sorted(range(len(new)), key=lambda j: index[j])
                new = [new[j] for j in order]
                repeat = torch.tensor(sorted(index), dtype=torch.long, device=engine.device)
        prompts = [r.prompt_ids for r in new] if repeat is None else [list(p) for p in first]
        steps = max([r.params.max_new_tokens for r in new] + [self._steps_left()])
        self._before_pass(new)
        input_ids, mask = engine.left_pad(prompts)
        logits = self._runner.join(input_ids, mask, steps, capacity=self.capacity, split=self.share,
                                   repeat=repeat)
        self.stats.prefill_rows += self._runner.prefilled
        self.running = self.running + new
        if self._next is None:
            self._next = torch.zeros(0, dtype=torch.long, device=engine.device)
        return logits

    def _steps_left(self) -> int:
        return max((r.params.max_new_tokens - len(r.token_ids) for r in self.running if not r.done), default=0)

    def _sample(self, logits: torch.Tensor) -> torch.Tensor:
        """The next token of every running row (n,): one argmax for the greedy rows, one draw per group of rows
        sharing temperature, top-p and generator."""
        rows = self.running
        if all(r.params.greedy for r in rows):
            return _argmax(logits)  # same tie-breaking (first max) as `model.generate`
        groups: dict[tuple, list[int]] = {}
        for p, r in enumerate(rows):
            key = ("greedy",) if r.params.greedy else (r.params.temperature, r.params.top_p, id(r.generator))
            groups.setdefault(key, []).append(p)
        tokens = torch.empty(len(rows), dtype=torch.long, device=logits.device)
        for idx in groups.values():
            row = rows[idx[0]]
            index = torch.tensor(idx, device=logits.device)
            tokens[index] = next_tokens(logits[index], row.params, row.generator)
        return tokens

    def _logprobs(self, logits: torch.Tensor, tokens: torch.Tensor) -> list[float] | None:
        """Each row's chosen-token log-prob under its own sampling distribution, for the rows that asked
        (`SamplingParams.logprobs`; the other entries are nan), or None when none did. (n, V), (n,) → n floats."""
        want: dict[tuple, list[int]] = {}
        for p, r in enumerate(self.running):
            if r.token_logprobs is not None and not r.done:
                want.setdefault((r.params.temperature, r.params.top_p), []).append(p)
        if not want:
            return None
        out = torch.full((len(self.running),), float("nan"))
        for idx in want.values():
            index = torch.tensor(idx, device=logits.device)
            out[idx] = sampled_logprobs(logits[index], tokens[index], self.running[idx[0]].params).cpu()
        return out.tolist()

    def _advance(self, row: Row, token: int) -> None:
        """Append a sampled token; finish the row on EOS, a stop string or its length; stream what is final."""
        row.token_ids.append(token)
        eos = self.engine.eos
        if token in eos:
            row.finish_reason = "stop"
        elif row._text is not None:
            new = row._text.push(row.token_ids)
            if row._stops is not None and new:
                text = row._text.text
                tail = text[max(0, len(text) - len(new) - max(map(len, row.params.stop)) + 1) :]
                # The incremental text can differ from the full decode at a window's edge (a leading space):
                # a hit is confirmed on the full text, as the engine's final text is.
                if row._stops.first_stop(tail) >= 0 and row._stops.first_stop(row._stops.decode(row.token_ids)) >= 0:
                    row.finish_reason = "stop"
        if not row.done and len(row.token_ids) >= row.params.max_new_tokens:
            row.finish_reason = "length"
        if row.done:
            self._finish_text(row)
        if row.on_text is not None:
            text = row.text if row.done else row._text.text
            ready = len(text) if row.done else len(text) - held_back(text, row.params.stop)
            if ready > len(row._sent) and text.startswith(row._sent):
                piece = text[len(row._sent) : ready]
                row._sent += piece
                row.on_text(piece)

    def _finish_text(self, row: Row) -> None:
        """The finished row's text: its ids decoded once in full, without the final EOS, cut before the first
        stop string; its ids end at the token that completed that stop string."""
        tokenizer = self.engine.tokenizer
        if tokenizer is None:
            return
        ids = row.token_ids
        ended_on_eos = row.finish_reason == "stop" and ids[-1] in self.engine.eos
        body = ids[:-1] if ended_on_eos else ids
        text = tokenizer.decode(body, skip_special_tokens=False)
        stops = row._stops
        if stops is not None and (cut := stops.first_stop(text)) >= 0:
            text = text[:cut]
            # Normally the last token completed the stop string; if an earlier one did (the incremental check
            # missed it), the completion still ends, ids included, at the first token that completes it.
            keep = stops.shortest_prefix(body)
            if keep < len(body) or row.finish_reason == "length":
                row.token_ids, row.finish_reason = body[:keep], "stop"
                if row.token_logprobs is not None:
                    row.token_logprobs = row.token_logprobs[:keep]
        row.text = text
