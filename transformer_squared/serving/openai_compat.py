"""OpenAI's wire format: error bodies, completion objects, streaming chunks, the model list.

Everything here is plain dicts (no FastAPI), shaped as OpenAI's API returns them, plus two fields of our own:
a top-level `"expert"` naming the weights that answered (an expert's name, or "base"), and
`system_fingerprint` = "<base weights fingerprint[:12]>:<expert>", so clients that keep only the standard
fields still see which expert answered. Servers also send it as the header `x-t2-expert`.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

EXPERT_HEADER = "x-t2-expert"
SSE_DONE = "data: [DONE]\n\n"


class APIError(Exception):
    """A request the server refuses, with its HTTP status and OpenAI's error fields."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def sse(obj: dict[str, Any]) -> str:
    """One server-sent event carrying `obj` as JSON."""
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _head(id: str, object: str, created: int, model: str, expert: str, fingerprint: str) -> dict[str, Any]:
    return {"id": id, "object": object, "created": created, "model": model,
            "system_fingerprint": f"{fingerprint}:{expert}", "expert": expert}


def chat_completion(*, id: str, created: int, model: str, expert: str, fingerprint: str, text: str,
                    finish_reason: str, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """A `chat.completion` object with one choice."""
    return {**_head(id, "chat.completion", created, model, expert, fingerprint),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": finish_reason}],
            "usage": usage(prompt_tokens, completion_tokens)}


def chat_chunk(*, id: str, created: int, model: str, expert: str, fingerprint: str, delta: dict[str, Any],
               finish_reason: str | None = None) -> dict[str, Any]:
    """A `chat.completion.chunk`: a content delta, or (delta {}) the final finish_reason."""
    return {**_head(id, "chat.completion.chunk", created, model, expert, fingerprint),
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}


def usage_chunk(*, object: str, id: str, created: int, model: str, expert: str, fingerprint: str,
                prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """The last chunk of a stream asked for with stream_options.include_usage: no choices, the usage."""
    return {**_head(id, object, created, model, expert, fingerprint), "choices": [],
            "usage": usage(prompt_tokens, completion_tokens)}


def text_completion(*, id: str, created: int, model: str, expert: str, fingerprint: str, text: str,
                    finish_reason: str | None, prompt_tokens: int | None = None,
                    completion_tokens: int | None = None) -> dict[str, Any]:
    """A `text_completion` object (also each streamed chunk, with usage only on the final one)."""
    out = {**_head(id, "text_completion", created, model, expert, fingerprint),
           "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}]}
    if prompt_tokens is not None:
        out["usage"] = usage(prompt_tokens, completion_tokens or 0)
    return out


def model_list(names: list[str], created: int, owner: str = "transformer-squared") -> dict[str, Any]:
    return {"object": "list",
            "data": [{"id": n, "object": "model", "created": created, "owned_by": owner} for n in names]}
