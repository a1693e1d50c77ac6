"""Request validation: a JSON body in, a `ParsedRequest` out, or an `APIError` (400) saying which field is wrong.

Hand-written rather than pydantic models so every refusal is OpenAI's error shape with the offending `param`,
and so this module needs no FastAPI. Fields OpenAI defines but this server cannot honour (n > 1, logprobs,
tools, penalties, logit_bias, echo, best_of, suffix) are refused, not silently ignored; purely informational
ones (user, metadata, store, service_tier, ...) are ignored.

Defaults follow OpenAI's API: temperature 1, top_p 1; `max_tokens` defaults to the server's
`default_max_tokens`. Model names are checked by the app (unknown model: 404), not here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..generation import SamplingParams
from .config import ServeConfig
from .openai_compat import APIError, bad_request

ROLES = ("system", "developer", "user", "assistant")
MAX_STOP = 4  # as OpenAI's API


@dataclass
class ParsedRequest:
    """A validated request: chat (`messages`) or completion (`prompt`: text or token ids)."""

    kind: str  # "chat" | "completion"
    model: str
    params: SamplingParams
    stream: bool = False
    include_usage: bool = False
    messages: list[dict[str, str]] | None = None
    prompt: str | list[int] | None = None


def _unsupported(param: str, what: str) -> APIError:
    return bad_request(f"{what} is not supported by this server", param=param, code="unsupported_parameter")


def _number(body: dict, name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad_request(f"{name} must be a number, got {value!r}", param=name)
    if value < lo or (lo_open and value == lo) or value > hi:
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise bad_request(f"{name} must be in {interval}, got {value!r}", param=name)
    return float(value)


def _int(body: dict, name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"{name} must be an integer, got {value!r}", param=name)
    return value


def _bool(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_request(f"{name} must be true or false, got {value!r}", param=name)
    return value


def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise bad_request("stop must be a string or a list of strings", param="stop")
    if len(stop) > MAX_STOP:
        raise bad_request(f"stop takes at most {MAX_STOP} strings, got {len(stop)}", param="stop")
    return tuple(s for s in stop if s)  # OpenAI ignores empty stop strings


def _max_tokens(body: dict, config: ServeConfig) -> int:
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    value = _int(body, name)
    if value is None:
        return config.default_max_tokens
    if value < 1:
        raise bad_request(f"{name} must be at least 1, got {value}", param=name)
    if value > config.max_tokens:
        raise bad_request(f"{name} is {value}, this server allows at most {config.max_tokens}; ask for fewer "
                          f"tokens", param=name, code="max_tokens_exceeded")
    return value


def check_text(body: Any) -> None:
    """Refuse any string in the body (keys included) holding a lone UTF-16 surrogate.

    JSON lets a client write "\\ud800" without its pair; Python parses it into a str that no tokenizer, no
    UTF-8 encoder and no response writer can handle, so it is refused here, naming where it is. Iterative: the
    parsed body may be nested as deep as the JSON parser allows.
    """
    stack: list[tuple[Any, str]] = [(body, "")]
    while stack:
        value, at = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                _check_string(key, f"a key of {at or 'the request body'}")
                stack.append((item, f"{at}.{key}" if at else str(key)))
        elif isinstance(value, list):
            stack.extend((item, f"{at}[{i}]") for i, item in enumerate(value))
        elif isinstance(value, str):
            _check_string(value, at)


def _check_string(text: str, at: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise bad_request(f"{at} is not valid Unicode text: a lone surrogate (U+{ord(text[e.start]):04X}) at "
                          f"character {e.start}; send UTF-8 text, or both halves of a surrogate pair",
                          param=at, code="invalid_text") from None


def _common(body: Any, config: ServeConfig) -> tuple[str, SamplingParams, bool, bool]:
    """model, sampling params, stream, include_usage: the fields chat and completions share."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", code="invalid_json")
    check_text(body)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("model is required: 'auto', 'base' or an expert's name (GET /v1/models lists them)",
                          param="model", code="missing_required_parameter" if model is None else "invalid_value")
    n = _int(body, "n")
    if n is not None and n != 1:
        raise _unsupported("n", f"n = {n} (several choices per request)")
    for name in ("presence_penalty", "frequency_penalty"):
        if _number(body, name, 0.0, -2.0, 2.0) != 0.0:
            raise _unsupported(name, name)
    if body.get("logit_bias"):
        raise _unsupported("logit_bias", "logit_bias")
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)
    seed = _int(body, "seed")
    stream = _bool(body, "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_request("stream_options must be an object", param="stream_options")
    if options and not stream:
        raise bad_request("stream_options is only allowed with stream: true", param="stream_options")
    include_usage = _bool(options or {}, "include_usage")
    params = SamplingParams(max_new_tokens=_max_tokens(body, config), temperature=temperature, top_p=top_p,
                            stop=_stop(body), seed=seed)
    return model, params, stream, include_usage


def _content(message: dict, i: int) -> str:
    content = message.get("content")
    param = f"messages[{i}].content"
    if content is None:
        if message.get("role") == "assistant":
            return ""
        raise bad_request(f"{param} is required", param=param)
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad_request(f"{param}: only text parts ({{'type': 'text', 'text': ...}}) are supported",
                                  param=param, code="unsupported_content")
            parts.append(part["text"])
        return "".join(parts)
    raise bad_request(f"{param} must be a string or a list of text parts", param=param)


def parse_chat(body: Any, config: ServeConfig) -> ParsedRequest:
    """Validate a /v1/chat/completions body."""
    model, params, stream, include_usage = _common(body, config)
    for name in ("tools", "functions", "tool_choice", "function_call"):
        if body.get(name):
            raise _unsupported(name, "tool calling")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise _unsupported("logprobs", "logprobs")
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
        raise _unsupported("response_format", "a response_format other than text")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list of {'role', 'content'} objects", param="messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise bad_request(f"messages[{i}] must be an object", param=f"messages[{i}]")
        role = m.get("role")
        if role not in ROLES:
            raise bad_request(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}",
                              param=f"messages[{i}].role")
        out.append({"role": "system" if role == "developer" else role, "content": _content(m, i)})
    if not any(m["role"] == "user" for m in out):
        raise bad_request("messages need at least one user message", param="messages")
    return ParsedRequest("chat", model, params, stream, include_usage, messages=out)


def parse_completion(body: Any, config: ServeConfig) -> ParsedRequest:
    """Validate a /v1/completions body (prompt: a string, or token ids; one prompt per request)."""
    model, params, stream, include_usage = _common(body, config)
    if _bool(body, "echo"):
        raise _unsupported("echo", "echo")
    best_of = _int(body, "best_of")
    if best_of is not None and best_of != 1:
        raise _unsupported("best_of", f"best_of = {best_of}")
    if body.get("suffix"):
        raise _unsupported("suffix", "suffix")
    if body.get("logprobs"):
        raise _unsupported("logprobs", "logprobs")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        if not prompt:
            raise bad_request("prompt is empty", param="prompt")
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        prompt = list(prompt)
    elif isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, (str, list)) for p in prompt):
        raise _unsupported("prompt", "more than one prompt per request (send them as separate requests; "
                                     "concurrent requests are batched)")
    else:
        raise bad_request("prompt must be a non-empty string or a list of token ids", param="prompt")
    return ParsedRequest("completion", model, params, stream, include_usage, prompt=prompt)
