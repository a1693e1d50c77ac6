"""HumanEval (Chen et al. 2021): 164 function-completion problems, an unseen task (SPEC §3). Ids: "HumanEval/<n>".

The paper evaluated HumanEval+ (EvalPlus) on its base tests; those files are not available offline, so this is
the original HumanEval, scored with its full `check` function.

Prompt: the paper's (fishfarm `tasks/evalplus/data.py`, `map_humaneval_problem`, and `tasks/mbpp2.py`): the
coding-assistant system message; the user turn "Write a solution to the following problem:" and the stripped
prompt in a ```python block; the reply was prefilled with "```python\\n" + that prompt (`response_prefix`).

Scoring accepts a full function or only its body: code that defines the entry point is run after the original
prompt (so the prompt's imports and helper functions are there, and the model's definition replaces the stub);
anything else is taken as the body and appended to the prompt.
"""

from __future__ import annotations

from pathlib import Path

from ..sandbox import CodeCheck
from ._data import local_or_hub, need, pick_split, where
from .base import Example
from .code import SYSTEM, CodeTask
from .code_extraction import defines


def as_body(code: str) -> str:
    """A function body: indented by 4 spaces if the model wrote it flush left."""
    lines = code.splitlines()
    first = next((ln for ln in lines if ln.strip()), "")
    if first and not first[0].isspace():
        lines = [("    " + ln) if ln.strip() else ln for ln in lines]
    return "\n".join(lines)


class HumanEval(CodeTask):
    name = "humaneval"
    splits = ("test",)
    default_split = "test"

    def load(self, split: str | None = None, data_dir: str | Path | None = None) -> list[Example]:
        pick_split(self, split)
        path, rows = local_or_hub(data_dir, "humaneval/HumanEval.jsonl", "openai/openai_humaneval", None, "test")
        examples = []
        for row in rows:
            at = where(path, row)
            prompt = need(row, "prompt", str, at)
            solution = need(row, "canonical_solution", str, at)
            examples.append(Example(
                id=need(row, "task_id", str, at), prompt=prompt, solution=f"```python\n{prompt}{solution}```",
                tests=(need(row, "test", str, at),), meta={"entry_point": need(row, "entry_point", str, at)}))
        return examples

    def messages(self, example: Example) -> list[dict[str, str]]:
        user = f"Write a solution to the following problem:\n```python\n{example.prompt.strip()}\n```"
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]

    def response_prefix(self, example: Example) -> str:
        return f"```python\n{example.prompt.strip()}"

    def check(self, example: Example, code: str) -> CodeCheck:
        entry = example.meta["entry_point"]
        if defines(code, entry):  # def, async def, or an assignment such as `f = lambda …`
            solution = example.prompt + "\n" + code  # the full function replaces the prompt's stub
        else:
            solution = example.prompt + as_body(code)
        # The judge runs the prompt too (trusted: its imports and helpers such as `poly`, which some checks call),
        # then `check(candidate)`; `candidate` and the entry point's own name (HumanEval/33's check calls
        # `sort_third` directly) both stand for the program's function, as in the original single program.
        return CodeCheck(solution=solution, tests=f"{example.tests[0]}\n\ncheck(candidate)\n",
                         judge_setup=example.prompt, aliases={"candidate": entry, entry: entry})
