"""Code tasks: extract the program from a reply, append the task's tests, run it in the sandbox.

Generated code is untrusted (SPEC §3): it only ever runs through `transformer_squared.sandbox` (time, memory,
process and output limits, no network). A program passes only if it exits cleanly *and* its last stdout line is
a random marker printed after every test has run, so `os._exit(0)` or `sys.exit()` before the tests, or a
swallowed exception, cannot fake a pass.
"""

from __future__ import annotations

import secrets
from abc import abstractmethod
from typing import Sequence

from .base import Example, Task, Verdict
from .scoring import extract_code

SYSTEM = ("You are an exceptionally intelligent coding assistant that consistently delivers accurate and reliable "
          "responses to user instructions.")  # the paper's (tasks/mbpp2.py), minus a doubled space


def _limits(timeout: float):
    from ..sandbox import SandboxLimits  # lazy: the sandbox is only needed to score code

    return SandboxLimits(timeout=timeout)


def _verdict(code: str, result) -> Verdict:
    if result.passed:
        return Verdict(True, code, "passed")
    tail = (result.stderr or result.stdout or "").strip().splitlines()[-3:]
    return Verdict(False, code, f"{result.status}: " + " | ".join(tail)[-500:])


class CodeTask(Task):
    """A task whose outputs are Python programs scored by running tests. Subclasses build the test program."""

    domain = "code"
    max_new_tokens = 512  # the paper's budget for MBPP and HumanEval

    def __init__(self, timeout: float = 10.0):
        self.timeout = float(timeout)

    @abstractmethod
    def program(self, example: Example, code: str) -> str:
        """The test program for `code` (the extracted solution): solution + tests, without the pass marker."""

    def extract(self, example: Example, output: str) -> str:
        """The solution code in a model's reply."""
        return extract_code(output, example.meta.get("entry_point"))

    def _prepared(self, example: Example, output: str, marker: str) -> tuple[str, str]:
        code = self.extract(example, output)
        return code, self.program(example, code) + f"\n\nprint({marker!r})\n"

    def score(self, example: Example, output: str) -> Verdict:
        from ..sandbox import run_python

        marker = _new_marker()
        code, program = self._prepared(example, output, marker)
        return _verdict(code, run_python(program, limits=_limits(self.timeout), success_marker=marker))

    def score_many(self, examples: Sequence[Example], outputs: Sequence[str], *, workers: int = 2) -> list[Verdict]:
        """Run all test programs in parallel, `workers` sandboxed processes at a time."""
        from ..sandbox import run_many

        if len(examples) != len(outputs):
            raise ValueError(f"{len(examples)} examples but {len(outputs)} outputs")
        marker = _new_marker()  # one per batch: unguessable by the code under test all the same
        prepared = [self._prepared(ex, out, marker) for ex, out in zip(examples, outputs)]
        results = run_many([program for _, program in prepared], limits=_limits(self.timeout), workers=workers,
                           success_marker=marker)
        return [_verdict(code, r) for (code, _), r in zip(prepared, results)]


def _new_marker() -> str:
    return f"T2-TESTS-PASSED-{secrets.token_hex(8)}"
