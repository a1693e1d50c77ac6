"""Validation and test accuracy during training: greedy decoding of a fixed subset, scored by the task.

The examples are split across data-parallel ranks and the counts summed, so every rank gets the same summary
({n, correct, accuracy, ci95}, Wilson interval) and therefore picks the same best step.
"""

from __future__ import annotations

from typing import Sequence

from ..generation import Engine, SamplingParams
from ..metrics import accuracy_summary
from ..tasks import Example, Task
from .distributed import Dist, shard, sum_floats
from .rollout import prompt_ids, score


def accuracy(policy, engine: Engine, tokenizer, task: Task, examples: Sequence[Example], *, max_new_tokens: int,
             d: Dist) -> dict:
    """Greedy accuracy of the current policy on `examples` (all ranks together)."""
    mine = shard(examples, d)
    correct = 0
    if mine:
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, stop=tuple(task.stop))
        prompts = [prompt_ids(tokenizer, task, e) for e in mine]
        with policy.generating():
            outs = engine.generate(prompts, params)
        _, ok, _ = score(task, mine, [o.text for o in outs], [task.response_prefix(e) for e in mine], -1.0)
        correct = int(ok.sum())
    total, right = sum_floats([len(mine), correct], d)
    return accuracy_summary([True] * int(right) + [False] * (int(total) - int(right)))


def limit(examples: Sequence[Example], n: int) -> list[Example]:
    """The first `n` examples (-1: all; 0: none)."""
    return list(examples) if n < 0 else list(examples[:n])
