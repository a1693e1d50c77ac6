"""The Task protocol: what a benchmark must provide to be evaluated, scored and trained on.

A task loads `Example`s from a split, turns one into chat messages (the paper's prompt format), and scores the
raw text a model produced. `reward` is what RL trains on (+1 correct, `wrong` otherwise, SPEC §2).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence


@dataclass(frozen=True)
class Example:
    """One benchmark item.

    id:       stable across runs and machines (e.g. `gsm8k/test/17`, `mbpp/11`, `HumanEval/0`, ARC's id).
    prompt:   the problem as given to the model, before any template (the task's `messages` formats it).
    answer:   the gold final answer, as a string (a number, a letter, a LaTeX expression); None for code tasks.
    solution: a reference solution text (worked solution or code), used as the target for next-token training.
    tests:    code tasks: the test program(s) run against the model's code.
    meta:     anything else a scorer or a report may need (choices, entry point, level, subject...).
    """

    id: str
    prompt: str
    answer: str | None = None
    solution: str | None = None
    tests: tuple[str, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    """The outcome of scoring one output: correct or not, what was extracted from it, and why."""

    correct: bool
    extracted: str | None
    detail: str = ""


class Task(ABC):
    """A benchmark or a user's own task. Subclasses set the class attributes and implement the methods."""

    name: str = ""
    domain: str = ""  # the expert domain it trains or tests: "math", "code", "reasoning", or a custom one
    splits: tuple[str, ...] = ("test",)
    default_split: str = "test"
    max_new_tokens: int = 512  # a generation budget that fits the task's answers
    stop: tuple[str, ...] = ()  # extra stop strings for generation (the chat template's end token always stops)

    @abstractmethod
    def load(self, split: str | None = None, data_dir: str | Path | None = None) -> list[Example]:
        """The examples of `split` (default `default_split`), from `data_dir` or, when None, the hub."""

    @abstractmethod
    def messages(self, example: Example) -> list[dict[str, str]]:
        """Chat messages for the model (the caller applies the tokenizer's chat template)."""

    @abstractmethod
    def score(self, example: Example, output: str) -> Verdict:
        """Score the raw model output against the example."""

    def plain_prompt(self, example: Example) -> str:
        """The example as a user would type it into a chat: no system prompt, no answer-format instructions.

        Dispatchers (the router, the dispatch expert) learn from both these and the templated prompts, so that
        pass 1 recognises a domain in what users write, not only in the benchmark's template."""
        return example.prompt

    def response_prefix(self, example: Example) -> str:
        """Text the assistant's reply starts with in the paper's template ("```python" for code), or "".

        Optional: a caller that supports prefill appends it after the generation prompt and passes prefix + its
        continuation to `score` (scorers also accept the continuation alone, or a reply made without prefill).
        """
        return ""

    def score_many(self, examples: Sequence[Example], outputs: Sequence[str], *, workers: int = 2) -> list[Verdict]:
        """Score many outputs (same order); code tasks override this to run their tests in parallel."""
        if len(examples) != len(outputs):
            raise ValueError(f"{len(examples)} examples but {len(outputs)} outputs")
        return [self.score(ex, out) for ex, out in zip(examples, outputs)]

    def reward(self, example: Example, output: str, *, wrong: float = -1.0) -> float:
        """RL reward: +1 if correct, `wrong` otherwise (SPEC §2: -1; the VLM experiments used -0.1)."""
        return 1.0 if self.score(example, output).correct else wrong

    def sft_target(self, example: Example) -> str:
        """The assistant's reply to train on with the next-token objective."""
        if example.solution is None:
            raise ValueError(f"{self.name}: example {example.id} has no reference solution")
        return example.solution
