"""MATH (Hendrycks et al.; unseen task, SPEC §3): `math` is the full 5000-problem test set (plus train/valid from
the official train set, even/odd rows), `math500` the PRM800K 500-problem test subset. Ids are MATH's
`unique_id` (e.g. "test/precalculus/807.json").

Prompt: the paper's (SakanaAI/self-adaptive-llms `tasks/math.py`): a system message asking to reason step by step
and put the final answer within \\boxed{}; the problem is the user turn. (The paper's string lacks a space after
"step by step,"; we add it.) The gold answer is the last \\boxed{} of the reference solution (math500: its
`answer` field). Answers are compared by Hugging Face's math-verify (`scoring.math_equal`); the extracted answer
reported is the last \\boxed{} as written.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import T2Error
from ._data import data_file, hub_rows, local_or_hub, need, pick_split, read_jsonl, resolve_dir, where
from .base import Example, Task, Verdict
from .scoring import extract_math_answer, last_boxed, math_equal

SYSTEM = "Solve the question below by reasoning step by step, and put the final answer within \\boxed{}."
_HUB_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
                 "prealgebra", "precalculus")


class _MathBase(Task):
    domain = "math"
    max_new_tokens = 1024  # the paper's budget for MATH

    def messages(self, example: Example) -> list[dict[str, str]]:
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": example.prompt}]

    def score(self, example: Example, output: str) -> Verdict:
        got = extract_math_answer(output)
        if got is None:
            return Verdict(False, None, "no \\boxed{} answer")
        ok = math_equal(got, example.answer)
        return Verdict(ok, got, "" if ok else f"expected {example.answer}")


def _example(row: dict, at: str, id: str, answer: str | None) -> Example:
    problem = need(row, "problem", str, at)
    solution = need(row, "solution", str, at)
    if answer is None:
        answer = last_boxed(solution)
        if answer is None:
            raise T2Error(f"{at}: the solution has no \\boxed{{}} final answer")
    subject = row.get("type") or row.get("subject")
    return Example(id=id, prompt=problem, answer=answer, solution=solution,
                   meta={"level": row.get("level"), "subject": subject})


class MATH(_MathBase):
    name = "math"
    splits = ("train", "valid", "test")
    default_split = "test"

    def load(self, split: str | None = None, data_dir: str | Path | None = None) -> list[Example]:
        split = pick_split(self, split)
        source = "test" if split == "test" else "train"
        root = resolve_dir(data_dir)
        examples = []
        if root is not None:
            path = data_file(root, f"math/{source}.jsonl")
            rows = [(r, where(path, r), need(r, "unique_id", str, where(path, r))) for r in read_jsonl(path)]
        else:
            # The hub copy has no unique_id: ids are built from subject and row, and differ from the files'.
            rows = []
            for subject in _HUB_SUBJECTS:
                for r in hub_rows("EleutherAI/hendrycks_math", subject, source):
                    at = f"hub:EleutherAI/hendrycks_math/{subject}/{source}:{r['_line']}"
                    rows.append((r, at, f"{source}/{subject}/hub-{r['_line'] - 1}"))
        for index, (row, at, id) in enumerate(rows):
            if split == "train" and index % 2 or split == "valid" and not index % 2:
                continue
            examples.append(_example(row, at, id, None))
        return examples


class MATH500(_MathBase):
    name = "math500"
    splits = ("test",)
    default_split = "test"

    def load(self, split: str | None = None, data_dir: str | Path | None = None) -> list[Example]:
        pick_split(self, split)
        path, rows = local_or_hub(data_dir, "math/math500_test.jsonl", "HuggingFaceH4/MATH-500", None, "test")
        examples = []
        for row in rows:
            at = where(path, row)
            examples.append(_example(row, at, need(row, "unique_id", str, at), need(row, "answer", str, at)))
        return examples
