"""The batching worker: one thread owns the model; requests that arrive together are decoded together.

    scheduler = Scheduler(sam, ServeConfig())        # sam: adaptation.model.SelfAdaptiveModel
    scheduler.start()
    scheduler.submit(job)                            # from any thread; events arrive through job.sink
    scheduler.stop(timeout=30)

The loop: wait for a request; wait up to `batch_wait_ms` more (or until `max_batch_size` are queued); take up to
`max_batch_size` in arrival order and run them as one batch:

1. pass 1 for the rows whose model is "auto": the strategy's `choose` over all of them at once (base weights);
2. weights: if every row uses the same weights (and `merge_uniform`), they are activated merged through the
   runtime's weight cache (a copy when cached: full speed); otherwise per-row mode, `svf.set_rows([z or None])`,
   each row its own expert computed factored, with `svf.select_rows` following the rows the decoder drops;
3. decode (decode.py): every row with its own params; a row's result goes back the moment it finishes.

Requests arriving meanwhile queue for the next batch (batches do not grow once started: the runners' KV cache
is allocated per batch). Admission is bounded: at most `max_queue` requests queued or running; a client that
goes away (`cancel`) leaves the queue at once, or is dropped from its running batch at the next step. `stop`
drains: no new requests, the admitted ones finish (up to a timeout), then the worker ends on base weights.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

from ..adaptation.cache import expert_key
from ..adaptation.strategy import Choice
from ..errors import T2Error
from .config import ServeConfig
from .decode import Row, decode
from .jobs import AUTO, BASE, Failed, Finished, Job, Started, TextDelta
from .openai_compat import APIError

log = logging.getLogger(__name__)


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
        self._running_jobs: list[Job] = []  # the batch being run
        self._draining = False
        self._thread: threading.Thread | None = None
        self.stats: dict[str, Any] = {"requests": 0, "completed": 0, "failed": 0, "cancelled_queued": 0,
                                      "cancelled_running": 0, "refused_full": 0, "batches": 0, "rows": 0,
                                      "new_tokens": 0, "max_batch": 0}
        self.batch_log: deque[dict[str, Any]] = deque(maxlen=256)  # the latest batches, for /health and tests

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
                    "stats": dict(self.stats), "recent_batches": list(self.batch_log)[-8:]}

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
    def _take(self) -> list[Job] | None:
        """Block until a batch is ready (None: stop). Marks the jobs running."""
        cfg = self.config
        with self._cond:
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
            batch = [self._pending.popleft() for _ in range(min(cfg.max_batch_size, len(self._pending)))]
            for job in batch:
                job.state = "running"
            self._running += len(batch)
            self._running_jobs = list(batch)
            return batch

    def _loop(self) -> None:
        try:
            while (batch := self._take()) is not None:
                try:
                    self._run_batch(batch)
                finally:
                    with self._cond:
                        self._running_jobs = []
                    for job in batch:  # never leak a slot, whatever went wrong
                        self._finish(job, Failed(APIError(500, "the request was not completed", type="server_error")),
                                     "failed")
        finally:
            try:
                self.rt.cache.activate(None)  # leave the model on its base weights
            except Exception:  # pragma: no cover - nothing left to tell
                log.exception("restoring the base weights failed")

    def _finish(self, job: Job, event: Finished | Failed, counter: str) -> None:
        with self._cond:
            if job.state == "done":
                return
            self.stats[counter] += 1
            self._release(job)
        job.sink(event)

    def _choice(self, model: str) -> Choice:
        if model == BASE:
            return Choice.base(label="requested")
        return Choice(self.experts[model], model, self.domains[model])

    def _run_batch(self, jobs: list[Job]) -> None:
        t0 = time.perf_counter()
        auto = [j for j in jobs if j.model == AUTO and not j.cancelled]
        pass1 = 0.0
        if auto:
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
        live = []
        for j in jobs:
            if j.cancelled:
                self._finish(j, Failed(_cancelled_error()), "cancelled_running")
            elif j.state != "done":
                if j.choice is None:
                    j.choice = self._choice(j.model)
                j.expert = j.choice.name
                live.append(j)
        if not live:
            return
        try:
            mode = self._activate([j.choice.expert for j in live])
            rows = [Row(j.prompt_ids, j.params, on_text=self._text_sink(j) if j.stream else None,
                        cancelled=j._cancel.is_set, on_done=self._done_sink(j)) for j in live]
            for j in live:
                j.sink(Started(j.expert, j.choice.label, mode, len(live)))
            stats = decode(self.rt.engine, rows, on_reindex=self.rt.am.svf.select_rows if mode == "rows" else None)
            if mode == "rows":  # between batches the model is merged or base, as strategies and the cache expect
                self.rt.am.svf.restore()  # (no weight copy: per-row mode never writes the weights)
        except Exception as e:
            log.exception("decoding a batch failed")
            for j in live:
                self._finish(j, Failed(APIError(500, f"generation failed: {e}", type="server_error")), "failed")
            self.rt.cache.activate(None)
            return
        with self._cond:
            self.stats["batches"] += 1
            self.stats["rows"] += len(live)
            self.stats["new_tokens"] += stats.new_tokens
            self.stats["max_batch"] = max(self.stats["max_batch"], len(live))
        self.batch_log.append({"size": len(live), "mode": mode, "experts": [j.expert for j in live],
                               "pass1_s": round(pass1, 4), "prefill_s": round(stats.prefill_s, 4),
                               "decode_s": round(stats.decode_s, 4), "steps": stats.steps,
                               "new_tokens": stats.new_tokens, "seconds": round(time.perf_counter() - t0, 4)})

    def _activate(self, experts: list) -> str:
        """Put the batch's weights in place; returns the mode ("merged" or "rows")."""
        keys = {None if e is None else expert_key(e) for e in experts}
        if len(keys) == 1 and self.config.merge_uniform:
            self.rt.cache.activate(experts[0])
            return "merged"
        self.rt.am.svf.set_rows([None if e is None else e.z for e in experts])
        return "rows"

    @staticmethod
    def _text_sink(job: Job):
        return lambda text: job.sink(TextDelta(text))

    def _done_sink(self, job: Job):
        def done(row: Row) -> None:
            if row.finish_reason == "cancelled":
                self._finish(job, Failed(_cancelled_error()), "cancelled_running")
            else:
                self._finish(job, Finished(row.text, row.finish_reason, len(row.prompt_ids), len(row.token_ids),
                                           job.expert), "completed")
        return done
