"""Where a step's sequences come from: the data order, RL rollouts with rewards and advantages, SFT targets.

`DataOrder` walks the training split in a seeded permutation per epoch; its `(epoch, cursor)` state goes into
checkpoints, so a resumed run sees the same prompts. `rollouts()` is a generator (nanochat's shape): each
`next()` draws this rank's shard of the next global batch, generates with the current policy (merged weights,
no grad), scores the completions with the task, and yields a `Batch` of (prompt ids, sampled ids, rewards,
advantages; with a low-precision engine also the log-prob of each sampled token under the distribution it was
drawn from, for the loss's importance weights). Sampling is seeded per (seed, step, rank), so it needs no
generator state in checkpoints.
`sft_batches()` yields the same `Batch` with the reference reply as the completion.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

from ..errors import T2Error
from ..generation import Engine, SamplingParams, chat_prompt_ids
from ..tasks import Example, Task, prompt_ids
from .distributed import Dist, shard
from .losses import advantages as group_advantages


class DataOrder:
    """Batches of example indices: a fresh seeded permutation each epoch, consumed in order."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self.epoch, self.cursor = 0, 0

    def _perm(self, epoch: int) -> list[int]:
        if getattr(self, "_cached", (None,))[0] != epoch:
            perm = list(range(self.n))
            random.Random(f"{self.seed}/{epoch}").shuffle(perm)
            self._cached = (epoch, perm)
        return self._cached[1]

    def next(self, k: int) -> list[int]:
        out: list[int] = []
        while len(out) < k:
            if self.cursor == self.n:
                self.epoch, self.cursor = self.epoch + 1, 0
            take = min(k - len(out), self.n - self.cursor)
            out += self._perm(self.epoch)[self.cursor : self.cursor + take]
            self.cursor += take
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "n": self.n, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if int(state["n"]) != self.n:
            raise T2Error(f"the training split has {self.n} examples, the checkpoint was made with {state['n']}; "
                          f"resume with the same data")
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])


@dataclass
class Batch:
    """This rank's sequences for one step (RL: P prompts × G samples, grouped by prompt)."""

    examples: list[Example]  # (N,) the example of each sequence
    prompts: list[list[int]]  # (N,) prompt token ids
    completions: list[list[int]]  # (N,) sampled (RL) or target (SFT) token ids
    rewards: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # (N,)
    correct: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))  # (N,)
    advantages: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # (N,)
    answered: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))  # (N,) extractable
    answers: list[str] = field(default_factory=list)  # (N,) what the scorer extracted ("" for nothing)
    group: int = 1  # G: sequences come in runs of G sharing one prompt
    # (N,) per completion token, log π_rollout(token) as sampled (non-exact rollouts only; None: exact)
    rollout_logprobs: list[list[float]] | None = None

    @property
    def size(self) -> int:
        return len(self.prompts)

    @property
    def completion_tokens(self) -> int:
        return sum(len(c) for c in self.completions)


def score(task: Task, examples: Sequence[Example], texts: Sequence[str], task_prefixes: Sequence[str],
          wrong: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """(rewards, correct, answered, answers) for completions: +1 if correct else `wrong` (SPEC §2), via the
    task's batch scorer; `answered` is whether the scorer could extract an answer at all (a reward of `wrong` for
    a reply with no answer is a format failure, not a wrong answer: the per-step metrics tell them apart);
    `answers` are the extracted answers as text (the per-step metrics show when every sample says the same)."""
    outputs = [p + t for p, t in zip(task_prefixes, texts)]
    verdicts = task.score_many(list(examples), outputs)
    correct = torch.tensor([v.correct for v in verdicts], dtype=torch.bool)
    answered = torch.tensor([v.extracted not in (None, "") for v in verdicts], dtype=torch.bool)
    rewards = torch.where(correct, torch.tensor(1.0), torch.tensor(float(wrong)))
    answers = ["" if v.extracted is None else str(v.extracted) for v in verdicts]
    return rewards, correct, answered, answers


def rollouts(policy, engine: Engine, tokenizer, task: Task, examples: Sequence[Example], order: DataOrder, *,
             batch_size: int, samples_per_prompt: int, params: SamplingParams, wrong_reward: float, seed: int,
             start_step: int, d: Dist, baseline: str = "loo", advantage_norm: str = "none") -> Iterator[Batch]:
    """Yield one `Batch` per step: this rank's shard of `batch_size` prompts, G samples each, scored, with
    advantages from `losses.advantages(rewards, baseline, advantage_norm)` within each prompt's group. When
    `engine` computes in a low precision, the batch carries the sampled tokens' log-probs as the engine drew them
    (`rollout_logprobs`)."""
    lowp = engine.compute_precision != "exact"
    step = start_step
    cache: dict[int, list[int]] = {}
    G = samples_per_prompt
    while True:
        step += 1
        mine = shard(order.next(batch_size), d)  # (P,) example indices
        for i in mine:
            if i not in cache:
                cache[i] = prompt_ids(task, tokenizer, examples[i])  # the prompts t2 eval gives the model
        exs = [examples[i] for i in mine for _ in range(G)]  # (N = P·G,) grouped by prompt
        prompts = [cache[i] for i in mine for _ in range(G)]
        step_params = SamplingParams(max_new_tokens=params.max_new_tokens, temperature=params.temperature,
                                     top_p=params.top_p, stop=params.stop,
                                     seed=None if params.greedy else hash_seed(seed, step, d.rank), logprobs=lowp)
        with policy.generating():
            outs = engine.generate(prompts, step_params)
        prefixes = [task.response_prefix(e) for e in exs]
        rewards, correct, answered, answers = score(task, exs, [o.text for o in outs], prefixes,
                                                    wrong_reward)  # (N,) each
        advantages = group_advantages(rewards.view(len(mine), G), baseline, advantage_norm).view(-1)  # (N,)
        yield Batch(exs, prompts, [o.token_ids for o in outs], rewards, correct, advantages, answered, answers, G,
                    [o.token_logprobs for o in outs] if lowp else None)


def sft_reply(task: Task, example: Example) -> str:
    """The reply next-token training targets: the reference reply, starting with the task's response prefix.

    A reference reply that already starts with the prefix (MBPP's and HumanEval's, "```python\n…```") is taken as
    it is: prepending the prefix again trained Qwen2.5-Coder on "```python\n```python\n…", and after 20 steps it
    answered every prefilled validation prompt with a second "```python" (0/90, from 32/90)."""
    try:
        target, prefix = task.sft_target(example), task.response_prefix(example)
    except ValueError as e:
        raise T2Error(f"--objective sft needs reference solutions: {e}") from None
    return target if target.startswith(prefix) else prefix + target


def sft_pair(tokenizer, task: Task, example: Example) -> tuple[list[int], list[int]]:
    """(prompt ids, target ids) for next-token training: the target is `sft_reply`, as the chat template closes
    the assistant turn (e.g. ending in <|im_end|>)."""
    messages = task.messages(example)
    prompt = chat_prompt_ids(tokenizer, messages)
    reply = sft_reply(task, example)
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": reply}], tokenize=True)
    full = full["input_ids"] if hasattr(full, "keys") else full
    full = list(full[0] if full and isinstance(full[0], list) else full)
    if full[: len(prompt)] == prompt and len(full) > len(prompt):
        return prompt, full[len(prompt):]
    # A template that renders earlier turns differently once a reply follows: the reply's tokens + EOS.
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return prompt, tokenizer(reply, add_special_tokens=False)["input_ids"] + eos


def sft_batches(tokenizer, task: Task, examples: Sequence[Example], order: DataOrder, *, batch_size: int,
                d: Dist) -> Iterator[Batch]:
    """Yield one `Batch` per step of (prompt, reference reply) pairs for next-token training."""
    cache: dict[int, tuple[list[int], list[int]]] = {}
    while True:
        mine = shard(order.next(batch_size), d)
        for i in mine:
            if i not in cache:
                cache[i] = sft_pair(tokenizer, task, examples[i])
        yield Batch([examples[i] for i in mine], [cache[i][0] for i in mine], [cache[i][1] for i in mine])


def hash_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes, unlike hash())."""
    return random.Random("/".join(str(p) for p in parts)).getrandbits(63)
