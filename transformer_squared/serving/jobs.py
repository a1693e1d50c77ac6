"""A request on its way through the server (`Job`), the events the worker sends back, and turning a validated
request into a job: tokenizing it and checking the limits that need the tokenizer (prompt length, context)."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import T2Error
from ..generation import SamplingParams, chat_prompt_ids, encode_prompt
from .config import ServeConfig
from .openai_compat import APIError, bad_request
from .schemas import ParsedRequest

AUTO, BASE = "auto", "base"
_ids = itertools.count(1)


# -- what the worker tells the request handler -------------------------------------------------------------
@dataclass
class Started:
    """The job's weights are chosen and it joins the running batch (prefilled at the next step)."""

    expert: str  # the expert's name, or "base"
    label: str  # what pass 1 decided ("requested" when the request named the model)
    mode: str  # how the batch runs as it joins: "merged" (one set of weights) or "rows" (per-row z)
    batch_size: int  # rows in the running batch, itself included


@dataclass
class TextDelta:
    text: str


@dataclass
class Finished:
    text: str
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int
    expert: str


@dataclass
class Failed:
    error: APIError


Event = Started | TextDelta | Finished | Failed


class Job:
    """One admitted request. `sink` receives the events, from the worker thread (or from `cancel`)."""

    def __init__(self, *, model: str, prompt_ids: Sequence[int], params: SamplingParams,
                 conversation: list[dict[str, str]] | None = None, stream: bool = False,
                 sink: Callable[[Event], None] | None = None):
        self.id = next(_ids)
        self.model, self.prompt_ids, self.params = model, list(prompt_ids), params
        self.conversation = conversation  # what pass 1 classifies (model "auto")
        self.stream = stream
        self.sink = sink or (lambda event: None)
        self.arrived = time.monotonic()
        self.state = "queued"  # queued -> running -> done (scheduler's lock guards it)
        self.choice: Any = None  # adaptation.strategy.Choice, once known
        self.expert: str | None = None
        self._cancel = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def __repr__(self) -> str:
        return f"Job({self.id}, model={self.model!r}, state={self.state})"


def prepare(request: ParsedRequest, *, tokenizer, config: ServeConfig, models: Sequence[str],
            context_length: int | None, sink: Callable[[Event], None] | None = None) -> Job:
    """Tokenize a validated request and check it against the served models and the length limits."""
    if request.model not in models:
        raise APIError(404, f"model {request.model!r} does not exist; this server has {', '.join(models)} "
                            f"(GET /v1/models)", param="model", code="model_not_found")
    conversation = None
    try:
        if request.kind == "chat":
            ids = chat_prompt_ids(tokenizer, request.messages)
            conversation = request.messages
        elif isinstance(request.prompt, str):
            ids = encode_prompt(tokenizer, request.prompt)
            conversation = [{"role": "user", "content": request.prompt}]
        else:
            ids = request.prompt
            vocab = len(tokenizer)
            if any(not 0 <= t < vocab for t in ids):
                raise bad_request(f"prompt token ids must be in [0, {vocab})", param="prompt")
            conversation = [{"role": "user", "content": tokenizer.decode(ids, skip_special_tokens=True)}]
    except T2Error as e:
        raise bad_request(str(e), param="messages" if request.kind == "chat" else "prompt") from None
    if not ids:
        raise bad_request("the prompt has no tokens", param="prompt")
    if len(ids) > config.max_prompt_tokens:
        raise bad_request(f"the prompt has {len(ids)} tokens, this server accepts at most {config.max_prompt_tokens}; "
                          f"shorten it", param="messages" if request.kind == "chat" else "prompt",
                          code="context_length_exceeded")
    wanted = len(ids) + request.params.max_new_tokens
    if context_length is not None and wanted > context_length:
        raise bad_request(f"the prompt ({len(ids)} tokens) plus max_tokens ({request.params.max_new_tokens}) "
                          f"exceeds the model's context of {context_length} tokens; ask for fewer tokens",
                          param="max_tokens", code="context_length_exceeded")
    return Job(model=request.model, prompt_ids=ids, params=request.params, conversation=conversation,
               stream=request.stream, sink=sink)
