"""serving/schemas.py: OpenAI defaults, and every refusal is a 400 naming the offending field."""

from __future__ import annotations

import pytest

from transformer_squared.serving.config import ServeConfig
from transformer_squared.serving.openai_compat import APIError
from transformer_squared.serving.schemas import parse_chat, parse_completion

CFG = ServeConfig(max_tokens=100, default_max_tokens=20)
MSG = [{"role": "user", "content": "hi"}]


def chat(**fields):
    return parse_chat({"model": "auto", "messages": MSG, **fields}, CFG)


def test_defaults_follow_openai():
    r = chat()
    assert r.kind == "chat" and r.model == "auto" and not r.stream
    assert r.params.temperature == 1.0 and r.params.top_p == 1.0 and r.params.max_new_tokens == 20
    assert r.params.stop == () and r.params.seed is None


def test_fields_map_to_sampling_params():
    r = chat(temperature=0, top_p=0.5, max_tokens=7, stop="\n", seed=3, stream=True,
             stream_options={"include_usage": True}, user="someone", n=1)
    assert (r.params.temperature, r.params.top_p, r.params.max_new_tokens) == (0.0, 0.5, 7)
    assert r.params.stop == ("\n",) and r.params.seed == 3 and r.stream and r.include_usage
    assert chat(max_completion_tokens=9).params.max_new_tokens == 9
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    assert parse_chat({"model": "m", "messages": [{"role": "developer", "content": parts}]} | {"messages": [
        {"role": "developer", "content": "sys"}, {"role": "user", "content": parts}]}, CFG).messages == [
        {"role": "system", "content": "sys"}, {"role": "user", "content": "ab"}]


@pytest.mark.parametrize("fields, param, code", [
    ({"temperature": -0.1}, "temperature", "invalid_value"),
    ({"temperature": "hot"}, "temperature", "invalid_value"),
    ({"top_p": 0}, "top_p", "invalid_value"),
    ({"n": 2}, "n", "unsupported_parameter"),
    ({"max_tokens": 101}, "max_tokens", "max_tokens_exceeded"),
    ({"max_tokens": 0}, "max_tokens", "invalid_value"),
    ({"max_tokens": 1.5}, "max_tokens", "invalid_value"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_value"),
    ({"stop": 3}, "stop", "invalid_value"),
    ({"seed": "x"}, "seed", "invalid_value"),
    ({"stream": "yes"}, "stream", "invalid_value"),
    ({"stream_options": {"include_usage": True}}, "stream_options", "invalid_value"),
    ({"logprobs": True}, "logprobs", "unsupported_parameter"),
    ({"tools": [{"type": "function"}]}, "tools", "unsupported_parameter"),
    ({"presence_penalty": 0.5}, "presence_penalty", "unsupported_parameter"),
    ({"messages": []}, "messages", "invalid_value"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role", "invalid_value"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content",
     "unsupported_content"),
    ({"messages": [{"role": "system", "content": "x"}]}, "messages", "invalid_value"),
    ({"model": None}, "model", "missing_required_parameter"),
])
def test_refusals_name_the_field(fields, param, code):
    with pytest.raises(APIError) as e:
        chat(**fields)
    assert e.value.status == 400 and e.value.param == param and e.value.code == code
    assert e.value.body()["error"]["type"] == "invalid_request_error"


def test_not_an_object():
    with pytest.raises(APIError, match="JSON object"):
        parse_chat([1, 2], CFG)


def test_completion_prompts():
    assert parse_completion({"model": "base", "prompt": "x"}, CFG).prompt == "x"
    assert parse_completion({"model": "base", "prompt": ["x"]}, CFG).prompt == "x"
    assert parse_completion({"model": "base", "prompt": [1, 2, 3]}, CFG).prompt == [1, 2, 3]
    assert parse_completion({"model": "base", "prompt": [[1, 2]]}, CFG).prompt == [1, 2]
    for bad, code in ((["a", "b"], "unsupported_parameter"), ("", "invalid_value"), (None, "invalid_value"),
                      ([1, "a"], "invalid_value")):
        with pytest.raises(APIError) as e:
            parse_completion({"model": "base", "prompt": bad}, CFG)
        assert e.value.param == "prompt" and e.value.code == code
    with pytest.raises(APIError, match="echo"):
        parse_completion({"model": "base", "prompt": "x", "echo": True}, CFG)
