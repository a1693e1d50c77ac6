"""ARC-Easy (the "reasoning" expert's training task) and ARC-Challenge (unseen), AI2 ARC-V1-Feb2018 (SPEC §3).

Splits: the official Train file's even rows are `train`, odd rows `valid`; `dev` is the official Dev file (HF
"validation"); `test` the official Test file. Ids are ARC's own question ids.

Prompt: the paper's (SakanaAI/self-adaptive-llms `tasks/arc.py`): a system message asking to think step by step and
finish with "the answer is (X)"; the user turn is the question, "Options:" and one "A. text" line per choice.
Options are always shown with letters A, B, C... by position, as the paper did; the gold answer is the letter at
the position of the official answer key, so the ~5% of items labelled "1"-"4" score correctly (the reference code
compared the numeric key with a letter and could never get them right). The paper's Llama-3 template also began
the reply with "Let's think step by step"; that was specific to one model's template, so there is no prefill here.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import T2Error
from ._data import data_file, hub_rows, need, pick_split, read_jsonl, resolve_dir, where
from .base import Example, Task, Verdict
from .scoring import LETTERS, extract_choice

SYSTEM = ("The following are multiple choice questions (with answers). Think step by step and then finish your "
          'answer with "the answer is (X)" where X is the correct letter choice.')


def format_choices(question: str, choices: list[str]) -> str:
    """The paper's user turn: the question, then "Options:" and "A. text" lines."""
    return question + "\nOptions:\n" + "".join(f"{LETTERS[i]}. {c}\n" for i, c in enumerate(choices))


def plain_choices(question: str, choices: list[str]) -> str:
    """A multiple-choice question without the benchmark's layout: the options inline, joined with "or"."""
    options = ", ".join(choices[:-1]) + f" or {choices[-1]}" if len(choices) > 1 else "".join(choices)
    return f"{question.rstrip()} {options}?"


def choice_example(id: str, question: str, texts: list[str], labels: list[str], key: str, at: str) -> Example:
    """An Example for a multiple-choice item; `key` is the official answer label (a letter or "1"-"5")."""
    if not 2 <= len(texts) <= len(LETTERS) or len(texts) != len(labels):
        raise T2Error(f"{at}: expected 2-{len(LETTERS)} choices with one label each")
    if key not in labels:
        raise T2Error(f"{at}: answer key {key!r} is not one of the labels {labels}")
    letter = LETTERS[labels.index(key)]
    return Example(id=id, prompt=question, answer=letter, solution=f"The answer is ({letter}).",
                   meta={"choices": list(texts), "labels": list(labels), "answer_key": key})


def score_choice(example: Example, output: str) -> Verdict:
    """Correct when the explicit answer in `output` is the gold letter; no answer found is wrong, never guessed."""
    n = len(example.meta["choices"])
    got = extract_choice(output, LETTERS[:n])
    if got is None:
        return Verdict(False, None, "no answer letter found")
    ok = got == example.answer
    return Verdict(ok, got, "" if ok else f"expected {example.answer}")


class ARC(Task):
    domain = "reasoning"
    splits = ("train", "valid", "dev", "test")
    default_split = "test"
    max_new_tokens = 512  # the paper's budget

    def __init__(self, subset: str):
        if subset not in ("Easy", "Challenge"):
            raise ValueError(f"ARC subset must be Easy or Challenge, not {subset!r}")
        self.subset = subset
        self.name = f"arc-{subset.lower()}"

    def load(self, split: str | None = None, data_dir: str | Path | None = None) -> list[Example]:
        split = pick_split(self, split)
        source = {"train": "Train", "valid": "Train", "dev": "Dev", "test": "Test"}[split]
        root = resolve_dir(data_dir)
        if root is not None:
            path = data_file(root, f"arc/ARC-{self.subset}/ARC-{self.subset}-{source}.jsonl")
            rows = [_official_row(r, where(path, r)) for r in read_jsonl(path)]
        else:
            hub_split = {"Train": "train", "Dev": "validation", "Test": "test"}[source]
            path = f"hub:allenai/ai2_arc/ARC-{self.subset}/{hub_split}"
            rows = [_hub_row(r, where(path, r)) for r in hub_rows("allenai/ai2_arc", f"ARC-{self.subset}",
                                                                  hub_split)]
        examples = []
        for index, (id, question, texts, labels, key, at) in enumerate(rows):
            if split == "train" and index % 2 or split == "valid" and not index % 2:
                continue
            examples.append(choice_example(id, question, texts, labels, key, at))
        return examples

    def messages(self, example: Example) -> list[dict[str, str]]:
        return [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": format_choices(example.prompt, example.meta["choices"])}]

    def plain_prompt(self, example: Example) -> str:
        """The question with its options inline, as typed in a chat: "Which ...? gray, warm, long or soft"."""
        return plain_choices(example.prompt, example.meta["choices"])

    def score(self, example: Example, output: str) -> Verdict:
        return score_choice(example, output)


def _official_row(row: dict, at: str):
    q = need(row, "question", dict, at)
    choices = need(q, "choices", list, at)
    try:
        texts = [str(c["text"]) for c in choices]
        labels = [str(c["label"]) for c in choices]
    except (KeyError, TypeError):
        raise T2Error(f"{at}: each choice needs 'text' and 'label'") from None
    return (need(row, "id", str, at), need(q, "stem", str, at), texts, labels, need(row, "answerKey", str, at), at)


def _hub_row(row: dict, at: str):
    choices = need(row, "choices", dict, at)
    return (need(row, "id", str, at), need(row, "question", str, at), [str(t) for t in choices["text"]],
            [str(lab) for lab in choices["label"]], need(row, "answerKey", str, at), at)
