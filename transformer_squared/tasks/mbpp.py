"""MBPP (Austin et al. 2021): the "code" expert's training task (SPEC §3).

`mbpp` is the full set (974 problems), `mbpp-sanitized` the hand-verified 427-problem subset; both use the standard
split by task id (google-research `mbpp/README.md`, HF `full`): `test` 11-510, `valid` 511-600, `train` 601-974,
`prompt` 1-10 (few-shot examples). Ids are `mbpp/<task_id>` in both (the same problem keeps its id).

The paper trained on MBPP+ (EvalPlus, 399 problems, its own 200/100/rest split) and scored only the base tests;
those files are not available offline (see shared/data/README.md), so this is the original MBPP, scored with
*all* of its tests: `test_list` plus `challenge_test_list` (full set) or `test_list` after `test_imports`
(sanitized).

Prompt: the paper's MBPP+ format (fishfarm `tasks/evalplus/data.py`, `map_mbpp_problem`, and `tasks/mbpp2.py`):
the coding-assistant system message; the user turn is the problem statement ending in ".", then "Your code should
satisfy the following assertion:" and the first test in a ```python block. The paper prefilled the reply with
"```python" (`response_prefix`).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import T2Error
from ..sandbox import CodeCheck
from ._data import data_file, hub_rows, need, pick_split, read_json_array, read_jsonl, resolve_dir, where
from .base import Example
from .code import SYSTEM, CodeTask

RANGES = {"prompt": (1, 10), "test": (11, 510), "valid": (511, 600), "train": (601, 974)}


def split_of(task_id: int) -> str | None:
    """The standard split a task id belongs to (None past 974, where no official problem exists)."""
    for split, (lo, hi) in RANGES.items():
        if lo <= task_id <= hi:
            return split
    return None


def _entry_point(code: str, tests: list[str]) -> str | None:
    """The reference solution's function that the tests call (used to pick the right code block in replies)."""
    for name in re.findall(r"^\s*def\s+(\w+)\s*\(", code, re.M):
        if any(re.search(rf"\b{re.escape(name)}\s*\(", t) for t in tests):
            return name
    return None


class MBPP(CodeTask):
    splits = ("train", "valid", "test", "prompt")
    default_split = "test"

    def __init__(self, sanitized: bool = False, timeout: float = 10.0):
        super().__init__(timeout=timeout)
        self.sanitized = sanitized
        self.name = "mbpp-sanitized" if sanitized else "mbpp"

    def load(self, split: str | None = None, data_dir: str | Path | None = None) -> list[Example]:
        split = pick_split(self, split)
        root = resolve_dir(data_dir)
        if root is not None:
            path = data_file(root, "mbpp/sanitized-mbpp.json" if self.sanitized else "mbpp/mbpp.jsonl")
            rows = read_json_array(path) if self.sanitized else read_jsonl(path)
            rows = [(r, where(path, r)) for r in rows]
        else:
            config = "sanitized" if self.sanitized else "full"
            rows = [(r, f"hub:google-research-datasets/mbpp/{config}/{s}:{r['_line']}")
                    for s in ("prompt", "test", "validation", "train")
                    for r in hub_rows("google-research-datasets/mbpp", config, s)]
        examples = [self._example(row, at) for row, at in rows]
        chosen = [ex for ex in examples if split_of(ex.meta["task_id"]) == split]
        return sorted(chosen, key=lambda ex: ex.meta["task_id"])

    def _example(self, row: dict, at: str) -> Example:
        task_id = need(row, "task_id", int, at)
        code = need(row, "code", str, at)
        text = need(row, "prompt" if self.sanitized else "text", str, at)
        tests = list(need(row, "test_list", list, at))
        if not tests or not all(isinstance(t, str) for t in tests):
            raise T2Error(f"{at}: 'test_list' should be a non-empty list of strings")
        if self.sanitized:
            setup = "\n".join(need(row, "test_imports", list, at))
        else:
            setup = need(row, "test_setup_code", str, at)
            tests += list(need(row, "challenge_test_list", list, at))
        return Example(id=f"mbpp/{task_id}", prompt=text, solution=f"```python\n{code}\n```",
                       tests=tuple(tests),
                       meta={"task_id": task_id, "setup": setup, "entry_point": _entry_point(code, tests)})

    def messages(self, example: Example) -> list[dict[str, str]]:
        text = example.prompt.strip()
        if not text.endswith("."):
            text += "."
        user = (f"{text} Your code should satisfy the following assertion:\n"
                f"```python\n{example.tests[0]}\n```")
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]

    def response_prefix(self, example: Example) -> str:
        return "```python\n"

    def check(self, example: Example, code: str) -> CodeCheck:
        # Order as in the original MBPP evaluation: solution, setup code, then the asserts. The setup builds
        # fixtures from the solution's own classes (`root = Node(1)`), so it runs with the candidate; the judge
        # reaches them by name, and imports the standard-library modules the asserts use (`math`, `sys`). The
        # entry point is bound explicitly, as it may shadow a builtin (mbpp/126 is called `sum`); other builtins
        # the asserts use stay the judge's own.
        entry = example.meta.get("entry_point")
        return CodeCheck(solution=f"{code}\n\n{example.meta['setup']}\n", tests="\n".join(example.tests),
                         aliases={entry: entry} if entry else {})
