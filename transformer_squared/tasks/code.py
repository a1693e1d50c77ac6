"""Code tasks: extract the program from a reply, judge it by the task's tests in the sandbox.

Generated code is untrusted (SPEC §3): it only ever runs through `transformer_squared.sandbox` (time, memory,
process and output limits, no network), and never in the same process as its tests. A task's `check` splits the
work: the solution (with any fixtures the task builds for it) runs as the candidate program, the asserts run in
a separate judge that calls the candidate's functions across a data-only channel (`sandbox.CodeCheck`). The judge
alone says "passed", so nothing the program does (print a marker, `os._exit(0)` or `sys.exit()` before the
tests, patch `AssertionError`, read the harness's files) can make failing tests count as passed.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Sequence

from ..sandbox import CodeCheck, SandboxLimits, SandboxResult, run_check, run_checks
from .base import Example, Task, Verdict
from .scoring import extract_code

SYSTEM = ("You are an exceptionally intelligent coding assistant that consistently delivers accurate and reliable "
          "responses to user instructions.")  # the paper's (tasks/mbpp2.py), minus a doubled space


def _limits(timeout: float) -> SandboxLimits:
    return SandboxLimits(timeout=timeout)


def _verdict(code: str, result: SandboxResult) -> Verdict:
    if result.passed:
        return Verdict(True, code, "passed")
    tail = (result.stderr or result.stdout or "").strip().splitlines()[-3:]
    return Verdict(False, code, f"{result.status}: " + " | ".join(tail)[-500:])


class CodeTask(Task):
    """A task whose outputs are Python programs scored by running tests. Subclasses build the check."""

    domain = "code"
    max_new_tokens = 512  # the paper's budget for MBPP and HumanEval

    def __init__(self, timeout: float = 10.0):
        self.timeout = float(timeout)

    @abstractmethod
    def check(self, example: Example, code: str) -> CodeCheck:
        """The judged check for `code` (the extracted solution): the candidate program and the tests for the judge."""

    def extract(self, example: Example, output: str) -> str:
        """The solution code in a model's reply."""
        return extract_code(output, example.meta.get("entry_point"))

    def score(self, example: Example, output: str) -> Verdict:
        code = self.extract(example, output)
        return _verdict(code, run_check(self.check(example, code), limits=_limits(self.timeout)))

    def score_many(self, examples: Sequence[Example], outputs: Sequence[str], *, workers: int = 2) -> list[Verdict]:
        """Judge all outputs in parallel, `workers` checks (each two sandboxed processes) at a time."""
        if len(examples) != len(outputs):
            raise ValueError(f"{len(examples)} examples but {len(outputs)} outputs")
        codes = [self.extract(ex, out) for ex, out in zip(examples, outputs)]
        checks = [self.check(ex, code) for ex, code in zip(examples, codes)]
        results = run_checks(checks, limits=_limits(self.timeout), workers=workers)
        return [_verdict(code, r) for code, r in zip(codes, results)]
