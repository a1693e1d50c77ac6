"""The HTTP layer: a FastAPI app over a `Scheduler`, and `serve` to run it with uvicorn (draining on exit).

    from transformer_squared.serving import ServeConfig, serve
    serve(SelfAdaptiveModel.from_dir("experts/"), ServeConfig(port=8000))

Endpoints: POST /v1/chat/completions, POST /v1/completions (both with `stream`), GET /v1/models,
GET /v1/models/{id}, GET /health. Errors are OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`.
With `ServeConfig.api_key`, every /v1 request must carry `Authorization: Bearer <key>` (401 otherwise), as
vLLM's `--api-key`: the openai client sends its `api_key` so. /health stays open for load balancers.

Each generation request: parse and validate (schemas.py), tokenize and check limits (jobs.py), submit to the
scheduler (429 when full), then wait for the worker's events. While it waits, a task listens for the client's
disconnect and cancels the job (leaves the queue, or its row is dropped from the running batch). A streamed
response starts once the job's batch starts (so the `x-t2-expert` header is known) and sends one SSE chunk per
piece of text. FastAPI and uvicorn are imported here only (the `serve` extra).
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures, whose types are imported lazily
# inside create_app, so they must be evaluated where they are defined.

import asyncio
import hmac
import json
import logging
import signal
import threading
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from .._version import __version__
from ..errors import T2Error
from ..fileio import parse_json
from . import openai_compat as oa
from .config import ServeConfig
from .jobs import Failed, Finished, Job, Started, TextDelta, prepare
from .openai_compat import APIError
from .scheduler import Scheduler
from .schemas import ParsedRequest, parse_chat, parse_completion

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 16 << 20


def require_deps():
    """FastAPI and uvicorn, or a T2Error saying how to install them."""
    try:
        import fastapi
        import uvicorn
    except ImportError:
        raise T2Error("t2 serve needs FastAPI and uvicorn: pip install 'transformer-squared[serve]'") from None
    return fastapi, uvicorn


def create_app(scheduler: Scheduler, config: ServeConfig | None = None):
    """A FastAPI app serving `scheduler`'s model; its lifespan starts the worker and stops it at shutdown."""
    require_deps()
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    config = config or scheduler.config
    tokenizer = scheduler.rt.tokenizer
    context_length = getattr(getattr(scheduler.rt.model, "config", None), "max_position_embeddings", None)
    fingerprint = str(scheduler.rt.am.fingerprint)[:12]
    created = oa.now()

    @asynccontextmanager
    async def lifespan(app):
        scheduler.start()
        yield
        await asyncio.to_thread(scheduler.stop, 5.0)  # uvicorn has already drained the requests

    app = FastAPI(title="transformer-squared", version=__version__, lifespan=lifespan)
    app.state.scheduler = scheduler
    if config.api_key is not None:
        app.add_middleware(RequireAPIKey, key=config.api_key)

    def error(e: APIError):
        return error_response(e)

    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        return error(e)

    @app.exception_handler(HTTPException)
    async def _http_error(request, e: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return error(APIError(e.status_code, f"{request.method} {request.url.path}: {e.detail}", code=code))

    @app.exception_handler(Exception)
    async def _server_error(request, e: Exception):
        log.exception("unhandled error")
        return error(APIError(500, f"internal error: {type(e).__name__}: {e}", type="server_error"))

    @app.get("/health")
    async def health():
        h = scheduler.health()
        return JSONResponse(h, status_code=503 if h["status"] != "ok" else 200)

    @app.get("/v1/models")
    async def models():
        return oa.model_list(scheduler.model_ids, created)

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str):
        if model_id not in scheduler.model_ids:
            raise APIError(404, f"model {model_id!r} does not exist (GET /v1/models)", param="model",
                           code="model_not_found")
        return oa.model_list([model_id], created)["data"][0]

    async def read_json(request: Request) -> Any:
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            raise APIError(413, f"request body over {MAX_BODY_BYTES >> 20} MiB", code="body_too_large")
        try:  # parse_json: malformed, not UTF-8 and nested too deeply (a RecursionError in `json`) alike
            return parse_json(body, "the request body")
        except T2Error as e:
            raise oa.bad_request(str(e), code="invalid_json") from None

    async def run(request: Request, parsed: ParsedRequest):
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def sink(event) -> None:  # called from the worker thread
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                pass

        job = prepare(parsed, tokenizer=tokenizer, config=config, models=scheduler.model_ids,
                      context_length=context_length, sink=sink)
        scheduler.submit(job)
        watcher = asyncio.create_task(_cancel_on_disconnect(request, scheduler, job))

        def cleanup() -> None:
            watcher.cancel()
            scheduler.cancel(job)  # no-op once the job is finished

        shape = Shape(parsed, job, fingerprint)
        try:
            event = await events.get()  # the worker sends Started before any text; Failed if it never starts
            if isinstance(event, Started):
                shape.expert = event.expert
            if not parsed.stream:
                while not isinstance(event, (Finished, Failed)):
                    event = await events.get()
            if isinstance(event, Failed):
                cleanup()
                return error(event.error)
            if not parsed.stream:
                cleanup()
                return JSONResponse(shape.complete(event), headers={oa.EXPERT_HEADER: event.expert})
        except BaseException:  # cancelled (server shutdown past its drain timeout) or broken
            cleanup()
            raise

        async def stream():
            try:
                if parsed.kind == "chat":
                    yield oa.sse(shape.chunk({"role": "assistant", "content": ""}))
                while True:
                    event = await events.get()
                    if isinstance(event, TextDelta):
                        yield oa.sse(shape.chunk({"content": event.text}))
                    elif isinstance(event, Finished):
                        for piece in shape.finish(event):
                            yield piece
                        return
                    elif isinstance(event, Failed):
                        yield oa.sse(event.error.body())  # the openai client raises on an "error" event
                        return
            finally:
                cleanup()

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={oa.EXPERT_HEADER: shape.expert, "cache-control": "no-cache"})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await run(request, parse_chat(await read_json(request), config))

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await run(request, parse_completion(await read_json(request), config))

    return app


def error_response(e: APIError):
    """`e` as a JSON response. ASCII-escaped: a message quoting the request can never fail to encode (Starlette's
    JSONResponse writes raw UTF-8, which a lone surrogate in the quoted text would turn into a 500)."""
    from fastapi.responses import Response

    headers = {"www-authenticate": "Bearer"} if e.status == 401 else None
    return Response(json.dumps(e.body()), status_code=e.status, media_type="application/json", headers=headers)


class RequireAPIKey:
    """ASGI middleware: /v1 requests need `Authorization: Bearer <key>`, compared in constant time.

    A plain ASGI class, as vLLM's, rather than `@app.middleware("http")`: Starlette's BaseHTTPMiddleware wraps
    `receive`, and the disconnect watcher of a running request must see the client's real `http.disconnect`.
    """

    def __init__(self, app, key: str):
        self.app = app
        self.expected = f"Bearer {key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] != "OPTIONS" and scope["path"].startswith("/v1"):
            given = dict(scope["headers"]).get(b"authorization")
            if given is None or not hmac.compare_digest(given, self.expected):
                e = APIError(401, "missing API key: send the header 'Authorization: Bearer <key>' (the openai "
                             "client's api_key)" if given is None else "incorrect API key provided",
                             code="invalid_api_key")
                await error_response(e)(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _cancel_on_disconnect(request, scheduler: Scheduler, job: Job) -> None:
    """Wait for the client to go away, then cancel its job (a no-op if it has finished by then)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            scheduler.cancel(job)
            return


class Shape:
    """Builds one request's response objects (chat or completion; whole or streamed)."""

    def __init__(self, parsed: ParsedRequest, job: Job, fingerprint: str):
        self.parsed, self.job, self.fingerprint = parsed, job, fingerprint
        self.chat = parsed.kind == "chat"
        self.id = oa.new_id("chatcmpl" if self.chat else "cmpl")
        self.created = oa.now()
        self.expert = ""

    def _head(self) -> dict[str, Any]:
        return dict(id=self.id, created=self.created, model=self.parsed.model, expert=self.expert,
                    fingerprint=self.fingerprint)

    def complete(self, done: Finished) -> dict[str, Any]:
        self.expert = done.expert
        if self.chat:
            return oa.chat_completion(**self._head(), text=done.text, finish_reason=done.finish_reason,
                                      prompt_tokens=done.prompt_tokens, completion_tokens=done.completion_tokens)
        return oa.text_completion(**self._head(), text=done.text, finish_reason=done.finish_reason,
                                  prompt_tokens=done.prompt_tokens, completion_tokens=done.completion_tokens)

    def chunk(self, delta: dict[str, Any]) -> dict[str, Any]:
        if self.chat:
            return oa.chat_chunk(**self._head(), delta=delta)
        return oa.text_completion(**self._head(), text=delta.get("content", ""), finish_reason=None)

    def finish(self, done: Finished) -> list[str]:
        """The last chunks: the finish reason, the usage chunk if asked for, [DONE]."""
        if self.chat:
            out = [oa.sse(oa.chat_chunk(**self._head(), delta={}, finish_reason=done.finish_reason))]
        else:
            out = [oa.sse(oa.text_completion(**self._head(), text="", finish_reason=done.finish_reason))]
        if self.parsed.include_usage:
            out.append(oa.sse(oa.usage_chunk(object="chat.completion.chunk" if self.chat else "text_completion",
                                             **self._head(), prompt_tokens=done.prompt_tokens,
                                             completion_tokens=done.completion_tokens)))
        out.append(oa.SSE_DONE)
        return out


def _draining_server(uv_config, scheduler: Scheduler):
    """uvicorn's Server, told to drain the scheduler (refuse new requests) as soon as an exit signal arrives.
    uvicorn then stops accepting connections, waits up to `timeout_graceful_shutdown` for the admitted requests,
    cancels the rest, and runs the app's lifespan shutdown (which ends the worker)."""
    _, uvicorn = require_deps()

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            scheduler.drain()
            super().handle_exit(sig, frame)

        @contextmanager
        def capture_signals(self):
            # As uvicorn's, minus re-raising the signal after shutdown: a drained server exits normally (status 0).
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return DrainingServer(uv_config)


def build_server(scheduler: Scheduler, config: ServeConfig | None = None, *, log_level: str = "info"):
    """A uvicorn server (not started) for `scheduler`: `server.run()` blocks until SIGINT/SIGTERM (or
    `server.handle_exit(signal.SIGTERM, None)` from another thread), draining admitted requests first."""
    _, uvicorn = require_deps()
    config = config or scheduler.config
    app = create_app(scheduler, config)
    uv = uvicorn.Config(app, host=config.host, port=config.port, log_level=log_level,
                        timeout_graceful_shutdown=config.drain_timeout, lifespan="on")
    return _draining_server(uv, scheduler)


def serve(model, config: ServeConfig | None = None, *, log_level: str = "info") -> None:
    """Serve a `SelfAdaptiveModel` (or a ready `Scheduler`) until SIGINT/SIGTERM; drains first (`build_server`)."""
    scheduler = model if isinstance(model, Scheduler) else Scheduler(model, config or ServeConfig())
    server = build_server(scheduler, config or scheduler.config, log_level=log_level)
    server.run()


def request_exit(server) -> None:
    """Ask a server running in another thread to shut down as SIGTERM would (drain, then stop)."""
    server.handle_exit(signal.SIGTERM, None)

