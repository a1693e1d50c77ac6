"""The batching worker: one thread owns the model; requests join the running batch between decoding steps.

    scheduler = Scheduler(sam, ServeConfig())        # sam: adaptation.model.SelfAdaptiveModel
    scheduler.start()
    scheduler.submit(job)                            # from any thread; events arrive through job.sink
    scheduler.stop(timeout=30)

The loop (continuous batching, as vLLM and TGI do): while no row runs, wait for a request, then up to
`batch_wait_ms` more (or until `max_batch_size` are queued); while rows run, take whatever is queued, up to
`max_batch_size` rows in all, between two decoding steps. The requests taken together join the running batch
(generation/batch.py, the engine's one decode loop):

1. pass 1 for the newcomers whose model is "auto": the strategy's `choose` over all of them at once (base
   weights; the running rows' weights are put back afterwards);
2. weights: if every row, running or joining, uses the same weights (and `merge_uniform`), they are merged
   through the runtime's weight cache (a copy when cached: full speed); otherwise per-row mode, each row its
   own expert computed factored: the batch calls `svf.set_rows([z or None])` for the rows of each forward pass
   (the newcomers' prefill, then all rows) and `svf.select_rows` when rows leave. When the rows left after
   some finish share one expert again, the batch goes back to merged weights (if that costs only a copy);
3. step: the newcomers are prefilled and every row decodes one token; a row's text is streamed as it comes
   and its result goes back the moment it finishes, and its slot is free for the next request.

With `mix_experts` off, a batch runs one set of weights (merged, full speed) instead: a new batch takes the
queued requests for the oldest request's weights, and while it runs, only requests for the same weights that
arrived before any request for other weights join; the others wait for the batch to drain, and the next batch
is for the then oldest request's weights (no request waits for ever). An "auto" request's weights are known
after pass 1;
those that chose other weights than their batch's go back to the front of the queue, their choice kept.

Admission is bounded: at most `max_queue` requests queued or running; a client that goes away (`cancel`)
leaves the queue at once, or is dropped from the running batch at the next step. `stop` drains: no new
requests, the admitted ones finish (up to a timeout), then the worker ends on base weights.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

from ..adaptation.cache import expert_key
from ..generation.batch import Row, RunningBatch
from ..adaptation.strategy import Choice
from ..errors import T2Error
from .config import ServeConfig
from .jobs import AUTO, BASE, Failed, Finished, Job, Started, TextDelta
from .openai_compat import APIError

log = logging.getLogger(__name__)
_INTERNAL = ("open", "t0")  # bookkeeping keys of a `batch_log` entry, not shown by /health


def _cancelled_error() -> APIError:
    return APIError(503, "the request was cancelled: its client disconnected or the server is shutting down",
                    type="server_error", code="cancelled")


class Scheduler:
    """Queue + batching worker over a `SelfAdaptiveModel` (its runtime: model, engine, weight cache, experts)."""

    def __init__(self, sam, config: ServeConfig = ServeConfig()):
        self.sam, self.rt, self.config = sam, sam.rt, config
        experts = self.rt.experts
        self.experts = {experts.names[d]: experts.experts[d] for d in experts.domains}  # name -> Expert
        for reserved in (AUTO, BASE):
            if reserved in self.experts:
                raise T2Error(f"an expert is named {reserved!r}, which is reserved for model selection; rename its "
                              f"directory")
        self.domains = {experts.names[d]: d for d in experts.domains}
        self._cond = threading.Condition()
        self._pending: deque[Job] = deque()
        self._admitted = 0  # queued + running
        self._running = 0
        self._running_jobs: list[Job] = []  # taken from the queue, not finished (guarded by the lock)
        self._batch: RunningBatch | None = None  # the running batch (worker thread only), None when idle
        self._rows: dict[Job, Row] = {}  # the running batch's jobs and their rows (worker thread only)
        self._groups: dict[Job, dict[str, Any]] = {}  # each running job's entry of `batch_log`
        self._mode: str | None = None  # "merged" or "rows" while a batch runs
        self._key: str | None = None  # the running batch's weights (`_weights_key`) when experts are not mixed
        self._draining = False
        self._thread: threading.Thread | None = None
        self.stats: dict[str, Any] = {"requests": 0, "completed": 0, "failed": 0, "cancelled_queued": 0,
                                      "cancelled_running": 0, "refused_full": 0, "batches": 0, "rows": 0,
                                      "new_tokens": 0, "max_batch": 0, "steps": 0}
        # The latest groups of requests that joined the batch together (size, mode, experts, pass-1 and
        # prefill seconds, their tokens and seconds once all have finished), for /health and tests.
        self.batch_log: deque[dict[str, Any]] = deque(maxlen=256)

    @property
    def model_ids(self) -> list[str]:
        """What `model` may be: auto, base, then each expert by name."""
        return [AUTO, BASE, *sorted(self.experts)]

    # -- admission (any thread) ----------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Queue `job`, or raise APIError: 429 when `max_queue` requests are admitted, 503 when draining."""
        with self._cond:
            if self._draining or self._thread is None or not self._thread.is_alive():
                raise APIError(503, "the server is shutting down; retry against another instance",
                               type="server_error", code="shutting_down")
            if self._admitted >= self.config.max_queue:
                self.stats["refused_full"] += 1
                raise APIError(429, f"the server is full ({self.config.max_queue} requests queued or running); "
                                    f"retry later", type="rate_limit_error", code="queue_full")
            self._admitted += 1
            self.stats["requests"] += 1
            self._pending.append(job)
            self._cond.notify_all()

    def cancel(self, job: Job) -> None:
        """The client went away (or the server gives up on it): a queued job leaves the queue now; a running one
        is dropped from its batch at the next decoding step. Idempotent; a finished job is left alone."""
        job._cancel.set()
        with self._cond:
            if job.state != "queued":
                return
            self._pending.remove(job)
            self.stats["cancelled_queued"] += 1
            self._release(job)
        job.sink(Failed(_cancelled_error()))

    def _release(self, job: Job) -> None:
        """Free the job's slot (caller holds the lock)."""
        if job.state == "done":
            return
        if job.state == "running":
            self._running -= 1
        job.state = "done"
        self._admitted -= 1
        self._cond.notify_all()

    def health(self) -> dict[str, Any]:
        with self._cond:
            return {"status": "draining" if self._draining else "ok", "queued": len(self._pending),
                    "running": self._running, "admitted": self._admitted, "max_queue": self.config.max_queue,
                    "stats": dict(self.stats), "recent_batches": [{k: v for k, v in b.items() if k not in _INTERNAL}
                                                         for b in list(self.batch_log)[-8:]]}

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="t2-serve-worker", daemon=True)
        self._thread.start()

    def drain(self) -> None:
        """Refuse new requests (503) from now on; admitted ones still run."""
        with self._cond:
            self._draining = True
            self._cond.notify_all()

    def stop(self, timeout: float = 30.0) -> bool:
        """Drain, let admitted requests finish for up to `timeout` s, cancel what is left, end the worker.
        Returns whether everything admitted finished in time."""
        self.drain()
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._admitted and time.monotonic() < deadline:
                self._cond.wait(min(0.1, max(0.0, deadline - time.monotonic())))
            clean = self._admitted == 0
            pending = list(self._pending)
        for job in pending:
            self.cancel(job)
        with self._cond:
            running = list(self._running_jobs)
        for job in running:
            job._cancel.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, timeout))
        return clean

    # -- the worker ----------------------------------------------------------------------------------------
    def _take(self, block: bool) -> list[Job] | None:
        """Jobs to join the batch, marked running: with `block` (nothing running), wait for one and then the
        batching window; else whatever is queued, without waiting. None: stop."""
        cfg = self.config
        with self._cond:
            if block:
                while not self._pending:
                    if self._draining and self._admitted == 0:
                        return None
                    self._cond.wait(0.5)
                deadline = self._pending[0].arrived + cfg.batch_wait_ms / 1000
                while self._pending and len(self._pending) < cfg.max_batch_size and not self._draining:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            free = cfg.max_batch_size - len(self._rows)
            if cfg.mix_experts:
                jobs = [self._pending.popleft() for _ in range(min(free, len(self._pending)))]
            else:
                jobs = self._take_one_expert(free)
            for job in jobs:
                job.state = "running"
            self._running += len(jobs)
            self._running_jobs.extend(jobs)
            return jobs

    def _take_one_expert(self, free: int) -> list[Job]:
        """(`mix_experts` off; caller holds the lock) Up to `free` queued jobs for the running batch's weights:
        for a new batch, every queued job for the oldest job's weights; while it runs, the queued jobs for its
        weights that arrived before any job for other weights (later ones wait with those, for the next batch). An
        "auto" job's weights are known after pass 1: a new batch that starts with one takes the "auto" jobs, and
        `_admit` puts back those that chose other weights."""
        if free <= 0 or not self._pending:
            return []
        if not self._rows:
            key = self._weights_key(self._pending[0])
            jobs = [j for j in self._pending if self._weights_key(j) == key][:free]
        else:
            jobs = []
            for j in self._pending:
                if len(jobs) == free or self._weights_key(j) != self._key:
                    break
                jobs.append(j)
        for j in jobs:
            self._pending.remove(j)
        return jobs

    def _weights_key(self, job: Job) -> str | None:
        """Which weights a job runs on: BASE, an expert's cache key, or None while an "auto" job has no choice."""
        if job.choice is not None:
            return BASE if job.choice.expert is None else expert_key(job.choice.expert)
        if job.model == AUTO:
            return None
        return BASE if job.model == BASE else expert_key(self.experts[job.model])

    def _put_back(self, jobs: list[Job]) -> None:
        """Return running jobs to the front of the queue, in their order (they are the oldest)."""
        with self._cond:
            for job in reversed(jobs):
                self._running_jobs.remove(job)
                self._running -= 1
                job.state = "queued"
                self._pending.appendleft(job)

    def _loop(self) -> None:
        try:
            while (jobs := self._take(block=not self._rows)) is not None:
                try:
                    if jobs:
                        self._admit(jobs)
                    if self._rows:
                        self._step()
                except Exception as e:  # never leak a slot or leave a half-updated batch behind
                    log.exception("decoding failed")
                    for job in [*jobs, *self._rows]:
                        self._finish(job, Failed(APIError(500, f"generation failed: {e}", type="server_error")),
                                     "failed")
                    self._close_batch()
                    self.rt.cache.activate(None)
        finally:
            for job in list(self._rows):
                self._finish(job, Failed(APIError(500, "the request was not completed", type="server_error")),
                             "failed")
            self._close_batch()
            try:
                self.rt.cache.activate(None)  # leave the model on its base weights
            except Exception:  # pragma: no cover - nothing left to tell
                log.exception("restoring the base weights failed")

    def _finish(self, job: Job, event: Finished | Failed, counter: str) -> None:
        self._rows.pop(job, None)
        group = self._groups.pop(job, None)
        with self._cond:
            if job in self._running_jobs:
                self._running_jobs.remove(job)
            if group is not None:
                group["open"] -= 1
                if not group["open"]:
                    group["seconds"] = round(time.perf_counter() - group.pop("t0"), 4)
            if job.state == "done":
                return
            self.stats[counter] += 1
            self._release(job)
        job.sink(event)

    def _choice(self, model: str) -> Choice:
        if model == BASE:
            return Choice.base(label="requested")
        return Choice(self.experts[model], model, self.domains[model])

    def _admit(self, jobs: list[Job]) -> None:
        """Pass 1 for the "auto" jobs, the weights for running + joining rows, and the jobs' rows added to the
        batch (prefilled at the next step)."""
        t0 = time.perf_counter()
        auto = [j for j in jobs if j.model == AUTO and j.choice is None and not j.cancelled]
        pass1 = 0.0
        if auto:
            self.rt.cache.activate(None)  # out of per-row mode: pass 1 runs its own batches
            self._mode = None  # the running rows' weights are set again below
            try:
                choices, pass1 = self.sam.choose([j.conversation for j in auto])
            except Exception as e:
                log.exception("pass 1 failed")
                for j in auto:
                    self._finish(j, Failed(APIError(500, f"pass 1 (expert choice) failed: {e}", type="server_error",
                                                    code="pass1_failed")), "failed")
            else:
                for j, c in zip(auto, choices):
                    j.choice = c
        if not self.config.mix_experts and jobs:
            # One set of weights per batch: the running batch's, or the oldest job's for a new one; "auto" jobs
            # that chose other weights in pass 1 wait (their choice kept) for a batch of their own.
            live = [j for j in jobs if not j.cancelled and j.state != "done"]  # (done: pass 1 failed)
            key = self._key if self._rows else (self._weights_key(live[0]) if live else None)
            later = [j for j in live if self._weights_key(j) != key]
            if later:
                self._put_back(later)
                jobs = [j for j in jobs if j not in later]
            if not self._rows:
                self._key = key
        joining = []
        for j in jobs:
            if j.cancelled:
                self._finish(j, Failed(_cancelled_error()), "cancelled_running")
            elif j.state != "done":
                if j.choice is None:
                    j.choice = self._choice(j.model)
                j.expert = j.choice.name
                joining.append(j)
        if not joining:
            if self._rows:
                self._set_weights(fresh=False)
            return
        fresh = self._batch is None
        if fresh:
            self._batch = self.rt.engine.batch(capacity=self.config.max_batch_size, on_rows=self._on_rows,
                                               on_reindex=self._on_reindex)
            self._batch.__enter__()
        for j in joining:
            self._rows[j] = self._batch.add(j.prompt_ids, j.params, state=j.choice.expert,
                                            on_text=self._text_sink(j) if j.stream else None)
        mode = self._set_weights(fresh=fresh)
        size = len(self._rows)
        for j in joining:
            j.sink(Started(j.expert, j.choice.label, mode, size))
        group = {"size": len(joining), "running": size, "mode": mode, "experts": [j.expert for j in joining],
                 "pass1_s": round(pass1, 4), "prefill_s": None, "new_tokens": 0, "seconds": None,
                 "open": len(joining), "t0": t0}
        with self._cond:
            self.stats["batches"] += 1
            self.stats["rows"] += len(joining)
            self.stats["max_batch"] = max(self.stats["max_batch"], size)
            self.batch_log.append(group)
        for j in joining:
            self._groups[j] = group

    def _set_weights(self, fresh: bool) -> str:
        """Put the weights of the running rows in place: merged when they all use one expert (and
        `merge_uniform`, and that expert is cached or the batch is starting: a merge mid-batch would stall
        every row), else per-row z. Returns the mode."""
        experts = [j.choice.expert for j in self._rows]
        keys = {None if e is None else expert_key(e) for e in experts}
        uniform = len(keys) == 1 and self.config.merge_uniform
        cheap = fresh or experts[0] is None or experts[0] in self.rt.cache or self._mode == "merged"
        mode = "merged" if uniform and cheap else "rows"
        if mode == "merged":
            self.rt.cache.activate(experts[0])  # a no-op when in place, else a copy (cached) or the first merge
        elif self._mode != "rows":
            self.rt.cache.activate(None)  # per-row z goes on top of the base weights (activating them again
            # while in per-row mode would clear the rows' z)
        if mode != self._mode:
            self._batch.reset_rows()  # per-row state set again (or not at all) before the next forward
        self._mode = mode
        return mode

    def _on_rows(self, experts: list) -> None:
        if self._mode == "rows":
            self.rt.am.svf.set_rows([None if e is None else e.z for e in experts])

    def _on_reindex(self, keep) -> None:
        if self._mode == "rows":
            self.rt.am.svf.select_rows(keep)

    def _step(self) -> None:
        """One decoding step (newcomers prefilled first); finished rows report and leave."""
        for job, row in self._rows.items():
            if job.cancelled:
                self._batch.cancel(row)
        stats = self._batch.stats
        prefill = stats.prefill_s
        fresh = {id(g): g for g in self._groups.values() if g["prefill_s"] is None}  # joined since the last step
        finished = self._batch.step()
        for g in fresh.values():
            g["prefill_s"] = round(stats.prefill_s - prefill, 4)
        by_row = {id(row): job for job, row in self._rows.items()}
        for row in finished:
            job = by_row[id(row)]
            group = self._groups.get(job)
            if group is not None:
                group["new_tokens"] += len(row.token_ids)
            with self._cond:
                self.stats["new_tokens"] += len(row.token_ids)
            if row.finish_reason == "cancelled":
                self._finish(job, Failed(_cancelled_error()), "cancelled_running")
            else:
                self._finish(job, Finished(row.text, row.finish_reason, len(row.prompt_ids), len(row.token_ids),
                                           job.expert), "completed")
        with self._cond:
            self.stats["steps"] += 1
        if not self._rows:
            self._close_batch()
        elif finished and self._mode == "rows":
            self._set_weights(fresh=False)  # the rows left may share one expert again

    def _close_batch(self) -> None:
        """Free the batch's KV cache; between batches the model is merged or base, as strategies and the cache
        expect (per-row mode never writes the weights: leaving it is free)."""
        if self._batch is not None:
            self._batch.close()
        self._batch = None
        if self._mode == "rows":
            self.rt.am.svf.restore()
        self._mode = self._key = None

    @staticmethod
    def _text_sink(job: Job):
        return lambda text: job.sink(TextDelta(text))
