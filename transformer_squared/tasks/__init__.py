"""Benchmarks and custom tasks: `get_task(name, **options)` returns a `Task` (see `base.py`).

Built-in names: gsm8k, math, math500, arc-easy, arc-challenge, mbpp, mbpp-sanitized, humaneval.
A custom task is `custom:<path.jsonl>` (or `get_task("custom", path=..., scorer=...)`; see `custom.py`).

Generation stops: the paper's stop strings ("Instruction:", "Response:") belonged to its non-chat "@@ Instruction /
@@ Response" template; with a chat template the end-of-turn token ends the reply, so built-in tasks set no `stop`.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Callable, Sequence

from ..errors import T2Error
from .arc import ARC
from .base import Example, Task, Verdict
from .custom import custom_task
from .gsm8k import GSM8K
from .hendrycks_math import MATH, MATH500
from .humaneval import HumanEval
from .mbpp import MBPP

# A factory, or "module:attribute" for a task defined in a higher layer of the package: such an entry is imported
# when asked for, so tasks/ never imports the layers built on it (the dispatch task is made of adaptation's pieces).
_TASKS: dict[str, Callable[..., Task] | str] = {
    "gsm8k": GSM8K,
    "math": MATH,
    "math500": MATH500,
    "arc-easy": lambda: ARC("Easy"),
    "arc-challenge": lambda: ARC("Challenge"),
    "mbpp": lambda timeout=10.0: MBPP(sanitized=False, timeout=timeout),
    "mbpp-sanitized": lambda timeout=10.0: MBPP(sanitized=True, timeout=timeout),
    "humaneval": HumanEval,
    "dispatch": "transformer_squared.adaptation.dispatch:dispatch_task",
}


def list_tasks() -> list[str]:
    """Names of the built-in benchmarks (custom tasks are `custom:<path>`; `dispatch` is a meta-task over them)."""
    return [n for n in _TASKS if n != "dispatch"]


def get_task(name: str, **options) -> Task:
    """The task called `name`, built with `options` (code tasks: `timeout`; custom: see `custom.custom_task`)."""
    if name == "custom" or name.startswith("custom:"):
        if name.startswith("custom:"):
            if "path" in options:
                raise T2Error("give the custom task's file once: either custom:<path> or path=, not both")
            options["path"] = name[len("custom:"):]
        factory: Callable[..., Task] = custom_task
    elif name in _TASKS:
        factory = _factory(_TASKS[name])
    else:
        raise T2Error(f"unknown task {name!r}; choose from {', '.join(list_tasks())}, or custom:<path.jsonl>")
    try:
        inspect.signature(factory).bind(**options)
    except TypeError:
        allowed = [p for p in inspect.signature(factory).parameters]
        raise T2Error(f"task {name!r} does not take option(s) {', '.join(sorted(options))}; "
                      f"it takes: {', '.join(allowed) or 'none'}") from None
    return factory(**options)


def _factory(entry: Callable[..., Task] | str) -> Callable[..., Task]:
    if callable(entry):
        return entry
    module, _, attribute = entry.partition(":")
    return getattr(importlib.import_module(module), attribute)


def score_many(task: Task, examples: Sequence[Example], outputs: Sequence[str], *, workers: int = 2) -> list[Verdict]:
    """Score `outputs` against `examples` (same order); code tasks run their tests `workers` at a time."""
    return task.score_many(examples, outputs, workers=workers)


def prompt_ids(task: Task, tokenizer, example: Example) -> list[int]:
    """The token ids a model answers `example` from: the task's chat messages through the tokenizer's chat
    template, followed by the task's response prefix (the paper prefilled code answers with "```python")."""
    # generation imports torch; tasks alone (get_task, scoring: `t2 score`) must not
    from ..generation import chat_prompt_ids

    ids = chat_prompt_ids(tokenizer, task.messages(example))
    prefix = task.response_prefix(example)
    return ids + (tokenizer.encode(prefix, add_special_tokens=False) if prefix else [])


def full_reply(task: Task, example: Example, generated: str) -> str:
    """The whole assistant reply: the response prefix the model was given plus what it generated."""
    return task.response_prefix(example) + generated


__all__ = ["Example", "Task", "Verdict", "full_reply", "get_task", "list_tasks", "prompt_ids", "score_many"]
