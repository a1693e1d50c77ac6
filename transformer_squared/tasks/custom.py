"""A user's own task from a JSONL file: `get_task("custom:<path>")` or `get_task("custom", path=...)`.

One JSON object per line:

    {"id"?: str|int, "prompt": str, "answer"?: str|number, "solution"?: str, "tests"?: str|[str],
     "choices"?: [str, ...], "split"?: str, ...}

- `id` defaults to "<task name>/<line number>"; give explicit ids if the file will be edited.
- `split` defaults to "test"; the task's splits are those present in the file.
- Other keys are kept in `Example.meta`.

Scorers (`scorer=`, inferred when omitted: "python" if every row has tests, "choice" if every row has choices,
"numeric" if every answer is a number, else "exact"):
- exact:   the \\boxed{} answer, else the text after the last "answer is"/"Answer:", else the last line; compared
           case-insensitively after trimming spaces, quotes, markdown and a final period.
- numeric: as GSM8K (`scoring.extract_final_number`), integers exactly, other values within a relative 1e-6.
- choice:  as ARC; `answer` is a letter (A, B, ...) or the text of one choice; choices are shown as "A. text".
- python:  the reply's code followed by `tests` (assert statements), run in the sandbox.

`system=` replaces the default system message ("" for none).
"""

from __future__ import annotations

import re
from pathlib import Path
from ..errors import T2Error
from ..sandbox import CodeCheck
from ._data import pick_split, read_jsonl
from .arc import SYSTEM as CHOICE_SYSTEM
from .arc import format_choices, plain_choices, score_choice
from .base import Example, Task, Verdict
from .code import SYSTEM as CODE_SYSTEM
from .code import CodeTask
from .scoring import LETTERS, extract_final_number, last_boxed, numbers_equal, parse_number

SCORERS = ("exact", "numeric", "choice", "python")
ANSWER_SYSTEM = "Solve the problem step by step, and put the final answer within \\boxed{}."
_KNOWN = {"id", "prompt", "answer", "solution", "tests", "choices", "split"}


def custom_task(path: str | Path | None = None, scorer: str | None = None, system: str | None = None,
                name: str | None = None, domain: str = "custom", max_new_tokens: int = 512,
                timeout: float = 10.0) -> Task:
    """A Task over the JSONL file at `path` (read and validated now; errors name the line)."""
    if not path:
        raise T2Error("custom task needs a file: use --task custom:<path.jsonl> (or get_task('custom', path=...))")
    path = Path(path).expanduser()
    if not path.is_file():
        raise T2Error(f"{path}: no such file (custom task); give the path of a JSONL file of prompts")
    rows = [_validate(row, f"{path}:{row['_line']}") for row in read_jsonl(path)]
    if not rows:
        raise T2Error(f"{path}: no rows; a custom task needs at least one JSON line with a 'prompt'")
    scorer = scorer or _infer_scorer(rows)
    if scorer not in SCORERS:
        raise T2Error(f"unknown scorer {scorer!r} for {path}; choose from {', '.join(SCORERS)}")
    name = name or f"custom:{path}"
    examples = [_example(row, f"{path}:{row['_line']}", scorer, name) for row in rows]
    _check_unique(examples, rows, path)
    cls = CustomCodeTask if scorer == "python" else CustomTask
    return cls(name=name, scorer=scorer, examples=examples, system=system, domain=domain,
               max_new_tokens=max_new_tokens, timeout=timeout)


def _validate(row: dict, at: str) -> dict:
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise T2Error(f"{at}: 'prompt' must be a non-empty string")
    if "id" in row and (isinstance(row["id"], bool) or not isinstance(row["id"], (str, int))):
        raise T2Error(f"{at}: 'id' must be a string or an integer")
    if "answer" in row and (isinstance(row["answer"], bool) or not isinstance(row["answer"], (str, int, float))):
        raise T2Error(f"{at}: 'answer' must be a string or a number")
    if "solution" in row and not isinstance(row["solution"], str):
        raise T2Error(f"{at}: 'solution' must be a string")
    tests = row.get("tests")
    if tests is not None and not (isinstance(tests, str) or
                                  (isinstance(tests, list) and tests and all(isinstance(t, str) for t in tests))):
        raise T2Error(f"{at}: 'tests' must be a string or a non-empty list of strings")
    choices = row.get("choices")
    if choices is not None and not (isinstance(choices, list) and 2 <= len(choices) <= len(LETTERS)
                                    and all(isinstance(c, str) for c in choices)):
        raise T2Error(f"{at}: 'choices' must be a list of 2 to {len(LETTERS)} strings")
    if "split" in row and (not isinstance(row["split"], str) or not row["split"].strip()):
        raise T2Error(f"{at}: 'split' must be a non-empty string")
    return row


def _infer_scorer(rows: list[dict]) -> str:
    if all("tests" in r for r in rows):
        return "python"
    if all("choices" in r for r in rows):
        return "choice"
    if all("answer" in r and parse_number(str(r["answer"])) is not None for r in rows):
        return "numeric"
    return "exact"


def _example(row: dict, at: str, scorer: str, task_name: str) -> Example:
    answer = None if row.get("answer") is None else str(row["answer"])
    meta = {k: v for k, v in row.items() if k not in _KNOWN and k != "_line"}
    meta["split"] = row.get("split", "test")
    tests: tuple[str, ...] = ()
    if scorer == "python":
        if "tests" not in row:
            raise T2Error(f"{at}: scorer 'python' needs 'tests' (assert statements) in every row")
        tests = (row["tests"],) if isinstance(row["tests"], str) else tuple(row["tests"])
    elif answer is None:
        raise T2Error(f"{at}: scorer {scorer!r} needs an 'answer' in every row")
    if scorer == "numeric" and parse_number(answer) is None:
        raise T2Error(f"{at}: answer {answer!r} is not a number (scorer 'numeric'); use scorer 'exact'")
    if scorer == "choice":
        choices = row.get("choices")
        if choices is None:
            raise T2Error(f"{at}: scorer 'choice' needs 'choices' in every row")
        letters = LETTERS[:len(choices)]
        if answer.strip().upper() in letters and len(answer.strip()) == 1:
            answer = answer.strip().upper()
        elif answer in choices:
            answer = letters[choices.index(answer)]
        else:
            raise T2Error(f"{at}: answer {answer!r} is neither a choice letter ({', '.join(letters)}) nor a choice")
        meta["choices"] = list(choices)
    id = str(row["id"]) if "id" in row else f"{task_name}/{row['_line']}"
    return Example(id=id, prompt=row["prompt"], answer=answer, solution=row.get("solution"), tests=tests,
                   meta={**meta, "line": row["_line"]})


def _check_unique(examples: list[Example], rows: list[dict], path: Path) -> None:
    seen: dict[str, int] = {}
    for ex, row in zip(examples, rows):
        if ex.id in seen:
            raise T2Error(f"{path}:{row['_line']}: duplicate id {ex.id!r} (first on line {seen[ex.id]})")
        seen[ex.id] = row["_line"]


def normalize_text(s: str) -> str:
    """Case- and markup-insensitive form for the exact scorer."""
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s)
    s = s.strip().strip("*_`\"'. \t")
    return re.sub(r"\s+", " ", s).casefold()


def extract_exact(output: str) -> str | None:
    """The final answer for the exact scorer: \\boxed{}, else after the last "answer is"/"answer:", else last line."""
    boxed = last_boxed(output)
    if boxed is not None:
        return boxed
    found = list(re.finditer(r"answer\s*(?:is|:)\s*:?", output, re.I))
    if found:
        line = output[found[-1].end():].split("\n", 1)[0].strip()
        if line:
            return line
    lines = [ln for ln in output.splitlines() if ln.strip()]
    return lines[-1] if lines else None


class _Custom:
    """What both custom task kinds share: examples held in memory, splits from the file, the prompt."""

    def __init__(self, *, name, scorer, examples, system, domain, max_new_tokens, timeout):
        self.name, self.scorer, self.domain = name, scorer, domain
        self.max_new_tokens = int(max_new_tokens)
        self.examples = examples
        self.splits = tuple(sorted({ex.meta["split"] for ex in examples}))
        self.default_split = "test" if "test" in self.splits else self.splits[0]
        default = {"choice": CHOICE_SYSTEM, "python": CODE_SYSTEM}.get(scorer, ANSWER_SYSTEM)
        self.system = default if system is None else system

    def load(self, split: str | None = None, data_dir: str | Path | None = None) -> list[Example]:
        split = pick_split(self, split)
        return [ex for ex in self.examples if ex.meta["split"] == split]

    def messages(self, example: Example) -> list[dict[str, str]]:
        user = format_choices(example.prompt, example.meta["choices"]) if self.scorer == "choice" else example.prompt
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + [{"role": "user", "content": user}]

    def plain_prompt(self, example: Example) -> str:
        """As a user would type it: a multiple-choice row's options inline, as ARC's (`arc.plain_choices`)."""
        if self.scorer == "choice":
            return plain_choices(example.prompt, example.meta["choices"])
        return example.prompt


class CustomTask(_Custom, Task):
    """Custom task scored by answer (exact, numeric or choice)."""

    def score(self, example: Example, output: str) -> Verdict:
        if self.scorer == "choice":
            return score_choice(example, output)
        if self.scorer == "numeric":
            got = extract_final_number(output)
            ok = got is not None and numbers_equal(parse_number(got), parse_number(example.answer))
        else:
            got = extract_exact(output)
            ok = got is not None and normalize_text(got) == normalize_text(example.answer)
        if got is None:
            return Verdict(False, None, "no answer found")
        return Verdict(ok, got, "" if ok else f"expected {example.answer}")


class CustomCodeTask(_Custom, CodeTask):
    """Custom task scored by running the row's tests after the reply's code."""

    def __init__(self, *, timeout: float = 10.0, **kw):
        _Custom.__init__(self, timeout=timeout, **kw)
        CodeTask.__init__(self, timeout=timeout)

    def check(self, example: Example, code: str) -> CodeCheck:
        return CodeCheck(solution=code, tests="\n".join(example.tests))
