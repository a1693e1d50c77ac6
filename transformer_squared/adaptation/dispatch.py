"""Dispatch: classify a prompt into the expert domains (the classification expert's training task, SPEC §4).

Examples are prompts drawn from the experts' own tasks, `per_domain` from each (balanced: every domain gets the
same number, the smallest available if one has fewer; seeded), shuffled together. The prompt is the user turn
the domain task would send (`Task.messages`), the answer the domain label; a reply is correct when its label
(`labels.extract_label`: last \\boxed{} wins, synonyms, unknown -> others) is the answer, so the RL
reward is +1/-1 on the extracted label. The system message is the prompt strategy's classification prompt.

`form` says how a prompt is written: `template` (the benchmark's user turn, with its answer-format instructions),
`plain` (`Task.plain_prompt`: as a user would type it in a chat) or `mixed` (each drawn prompt in one of the two,
by a seeded coin). Dispatchers trained on templates alone missed plainly worded prompts (results/README.md,
"Dispatch on prompts users write"); `mixed` teaches both.

The reply is prefilled with "Classification: \\boxed{" (`response_prefix`; `prefill=False` for the paper's
unprefilled prompt): on SmolLM2-135M the unprefilled prompt gave 0/18 boxed labels (the model answers the
question instead), so RL would only ever see reward -1. The classifier strategy prefills the same way.

Splits follow the domain tasks' splits: `train` from their train splits, `valid` from their valid splits (the
training recipe's early stopping), `test` from their test splits, for measuring a dispatcher only. The reference
code trained its classifier on *test* questions of GSM8K and ARC-Challenge (SPEC §3, leakage into "unseen"
tasks); here nothing but `train` is for training, and the unseen tasks (MATH, HumanEval, ARC-Challenge) are
never drawn. Ids are `dispatch/<domain>/<original id>`.

It lives in adaptation/, not tasks/, because it is built from adaptation's pieces (the classification prompt, label
extraction, expert sets); `tasks.get_task("dispatch")` reaches it through the registry's lazy entry, so tasks never
imports adaptation (the layering in pyproject.toml's [tool.importlinter]).

    get_task("dispatch")                                     # math: gsm8k, code: mbpp, reasoning: arc-easy
    get_task("dispatch", experts="experts/", per_domain=300) # domains and tasks from an expert set
    get_task("dispatch", domains={"math": "gsm8k", "medical": "custom:med.jsonl"})
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Mapping

from ..errors import T2Error
from ..tasks import get_task
from ..tasks._data import pick_split
from ..tasks.base import Example, Task, Verdict
from .config import FORMS
from .expert_set import domain_tasks, scan, task_entries
from .labels import extract_label
from .prompt import PREFILL, classification_messages
from .strategy import user_text

PAPER_DOMAINS = {"math": "gsm8k", "code": "mbpp", "reasoning": "arc-easy"}


class DispatchTask(Task):
    name = "dispatch"
    domain = "dispatch"
    splits = ("train", "valid", "test")
    default_split = "test"
    max_new_tokens = 64  # the label comes first; the reference allowed 1024

    def __init__(self, domains: Mapping[str, str], per_domain: int = 200, seed: int = 0,
                 descriptions: Mapping[str, str] | None = None, prefill: bool = True, form: str = "template"):
        if not domains:
            raise T2Error("the dispatch task needs at least one domain -> task")
        if per_domain < 1:
            raise T2Error(f"per_domain must be at least 1, got {per_domain}")
        if form not in FORMS:
            raise T2Error(f"dispatch prompt form must be one of {', '.join(FORMS)}, got {form!r}")
        self.domains = dict(sorted(domains.items()))
        self.tasks = {d: get_task(t) for d, t in self.domains.items()}
        self.per_domain, self.seed = int(per_domain), int(seed)
        self.descriptions = dict(descriptions or {})
        self.prefill = bool(prefill)
        self.form = form

    def load(self, split: str | None = None, data_dir: str | Path | None = None) -> list[Example]:
        split = pick_split(self, split)
        pools = {}
        for d, task in self.tasks.items():
            if split not in task.splits:
                raise T2Error(f"dispatch: task {task.name} (domain {d}) has no {split!r} split; "
                              f"it has {', '.join(task.splits)}")
            pools[d] = task.load(split, data_dir)
        n = min(self.per_domain, *(len(p) for p in pools.values()))
        if n == 0:
            empty = [d for d, p in pools.items() if not p]
            raise T2Error(f"dispatch: no {split} examples for domain(s) {', '.join(empty)}")
        rng = random.Random(f"dispatch/{split}/{self.seed}")
        examples = []
        for d, pool in pools.items():
            task = self.tasks[d]
            for ex in rng.sample(pool, n):
                plain = self.form == "plain" or self.form == "mixed" and rng.random() < 0.5
                text = task.plain_prompt(ex) if plain else user_text(task.messages(ex))
                examples.append(Example(
                    id=f"dispatch/{d}/{ex.id}", prompt=text, answer=d,
                    solution=f"Classification: \\boxed{{{d}}}",
                    meta={"domain": d, "source_task": task.name, "source_id": ex.id,
                          "form": "plain" if plain else "template"}))
        rng.shuffle(examples)
        return examples

    def messages(self, example: Example) -> list[dict[str, str]]:
        return classification_messages(example.prompt, list(self.domains), self.descriptions)

    def response_prefix(self, example: Example) -> str:
        return PREFILL if self.prefill else ""

    def sft_target(self, example: Example) -> str:
        """The reply after the response prefix: "math}" when prefilled, else the whole classification."""
        prefix = self.response_prefix(example)
        return example.solution[len(prefix):] if example.solution.startswith(prefix) else example.solution

    def score(self, example: Example, output: str) -> Verdict:
        """`output` is prefix + continuation (or a whole reply): the label after the last box counts."""
        got = extract_label(output, list(self.domains))
        ok = got == example.answer
        return Verdict(ok, got, "" if ok else f"expected {example.answer}")


def dispatch_task(experts: str | Path | None = None, domains: Mapping[str, str] | None = None,
                  per_domain: int = 200, seed: int = 0, prefill: bool = True, form: str = "template") -> DispatchTask:
    """The dispatch task over an expert set's domains (`experts=DIR`) or an explicit {domain: task} map
    (default: the paper's math/code/reasoning -> gsm8k/mbpp/arc-easy)."""
    if experts is not None and domains is not None:
        raise T2Error("give the dispatch task either experts=DIR or domains={...}, not both")
    descriptions = {}
    if experts is not None:
        entries = scan(experts)
        domains = domain_tasks(entries)
        descriptions = {e.domain: str(e.meta["description"]) for e in task_entries(entries)
                        if e.meta.get("description")}
    return DispatchTask(domains or PAPER_DOMAINS, per_domain=per_domain, seed=seed, descriptions=descriptions,
                        prefill=prefill, form=form)
