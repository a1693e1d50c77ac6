"""GSM8K: grade-school math word problems; the "math" expert's training task (SPEC §3).

Splits: the official train file's even rows are `train`, odd rows `valid` (as the paper's code); `test` is the
official 1319-problem test file. Ids are `gsm8k/<file>/<row>`, with <file> the official file ("train" or "test")
and <row> the 0-based row in it, so an id never changes when our train/valid rule does and matches the HF hub.

Prompt: the paper's (SakanaAI/self-adaptive-llms `tasks/gsm8k.py`): an Alpaca-style system message, the question as
the user turn, nothing asked about the answer format. The answer is the reply's explicit one ("####", \\boxed{},
"the answer is", read to an equation's result), else its last number; a correction counts only as the final
statement (`scoring.extract_final_number` has the rule). Integers compare exactly (`scoring.numbers_equal`).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import T2Error
from ._data import local_or_hub, need, pick_split, where
from .base import Example, Task, Verdict
from .scoring import extract_final_number, numbers_equal, parse_number

SYSTEM = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
          "request.\n\n")
_CALC = re.compile(r"<<[^<>]*>>")  # calculator annotations in the reference solutions


class GSM8K(Task):
    name = "gsm8k"
    domain = "math"
    splits = ("train", "valid", "test")
    default_split = "test"
    max_new_tokens = 512  # the paper's budget

    def load(self, split: str | None = None, data_dir: str | Path | None = None) -> list[Example]:
        split = pick_split(self, split)
        source = "test" if split == "test" else "train"
        path, rows = local_or_hub(data_dir, f"gsm8k/{source}.jsonl", "openai/gsm8k", "main", source)
        examples = []
        for index, row in enumerate(rows):
            if split == "train" and index % 2 or split == "valid" and not index % 2:
                continue
            at = where(path, row)
            question = need(row, "question", str, at)
            solution = need(row, "answer", str, at)
            if "####" not in solution:
                raise T2Error(f"{at}: answer has no '#### <number>' line")
            gold = extract_final_number(solution)
            if gold is None:
                raise T2Error(f"{at}: no number after '####' in the answer")
            examples.append(Example(id=f"gsm8k/{source}/{index}", prompt=question, answer=gold,
                                    solution=_CALC.sub("", solution), meta={"row": index}))
        return examples

    def messages(self, example: Example) -> list[dict[str, str]]:
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": example.prompt}]

    def score(self, example: Example, output: str) -> Verdict:
        got = extract_final_number(output)
        if got is None:
            return Verdict(False, None, "no number in the output")
        ok = numbers_equal(parse_number(got), parse_number(example.answer))
        return Verdict(ok, got, "" if ok else f"expected {example.answer}")
