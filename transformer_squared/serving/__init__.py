"""The OpenAI-compatible server (`t2 serve`): one worker thread batches concurrent requests continuously, mixed
experts included (per-row SVF), after choosing an expert per request when its model is "auto".

    config.py         ServeConfig: address, batching, limits
    schemas.py        request validation (OpenAI fields; refusals name the field)
    openai_compat.py  OpenAI's response, chunk and error shapes
    jobs.py           a request in flight (Job), the worker's events, tokenizing and length limits
    scheduler.py      queue, continuous batching (requests join the running batch between steps: the engine's
                      RunningBatch), pass 1, weights (merged or per-row), the worker thread
    app.py            FastAPI routes, disconnect handling, uvicorn with draining shutdown

FastAPI and uvicorn (the `serve` extra) are imported by app.py only.
"""

from .config import ServeConfig

__all__ = ["ServeConfig", "Scheduler", "create_app", "build_server", "serve"]


def __getattr__(name):
    if name == "Scheduler":
        from .scheduler import Scheduler

        return Scheduler
    if name in ("create_app", "build_server", "serve"):
        from . import app

        return getattr(app, name)
    raise AttributeError(name)
