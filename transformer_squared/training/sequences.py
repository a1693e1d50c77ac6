"""Teacher-forced passes over (prompt, completion) pairs: packing, micro-batching, logits for completions only.

Layout of a packed micro-batch (the generation engine's, so positions match what was sampled):

    [pad pad p0 p1 p2 | c0 c1 c2 pad]      prompts left-padded to Tp, completions right-padded to Tc

Position ids count real tokens only. Every completion token c_t is predicted at column Tp−1+t, so one
`logits_to_keep=Tc+1` slice gives all the predictions the losses need and the LM head never runs on prompt
tokens (for SmolLM2 the head is a fifth of the model's multiply-adds per token). With G samples per prompt
the prompt runs once per group and the samples continue from its (repeated) KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass
class Packed:
    """One micro-batch: model inputs and the completion tokens the losses score."""

    input_ids: torch.Tensor  # (N, Tp + Tc)
    attention_mask: torch.Tensor  # (N, Tp + Tc)
    position_ids: torch.Tensor  # (N, Tp + Tc)
    tokens: torch.Tensor  # (N, Tc) completion tokens, pad beyond each length
    mask: torch.Tensor  # (N, Tc) float, 1 on real completion tokens
    index: list[int]  # which sequences of the batch these rows are

    @property
    def padded_tokens(self) -> int:
        return self.input_ids.numel()


def pack(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_id: int,
         index: Sequence[int], device: torch.device | str = "cpu") -> Packed:
    """Pack the sequences `index` of (prompts, completions) into one micro-batch."""
    N = len(index)
    Tp = max(len(prompts[i]) for i in index)
    Tc = max(max(len(completions[i]) for i in index), 1)
    input_ids = torch.full((N, Tp + Tc), pad_id, dtype=torch.long)
    attention = torch.zeros(N, Tp + Tc, dtype=torch.long)
    mask = torch.zeros(N, Tc)
    for row, i in enumerate(index):
        p, c = list(prompts[i]), list(completions[i])
        input_ids[row, Tp - len(p) : Tp] = torch.tensor(p, dtype=torch.long)
        attention[row, Tp - len(p) : Tp] = 1
        if c:
            input_ids[row, Tp : Tp + len(c)] = torch.tensor(c, dtype=torch.long)
            attention[row, Tp : Tp + len(c)] = 1
            mask[row, : len(c)] = 1
    positions = (attention.cumsum(-1) - 1).clamp(min=0)  # (N, Tp + Tc)
    tokens = input_ids[:, Tp:].clone()  # (N, Tc)
    return Packed(input_ids.to(device), attention.to(device), positions.to(device), tokens.to(device),
                  mask.to(device), list(index))


def pad_completions(values: Sequence[Sequence[float]], index: Sequence[int], width: int,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """Per-token values of the completions `index` (e.g. their rollout log-probs), right-padded with 0 as `pack`
    lays the completion tokens out: (N, width)."""
    out = torch.zeros(len(index), width)
    for row, i in enumerate(index):
        if len(values[i]):
            out[row, : len(values[i])] = torch.tensor(values[i], dtype=torch.float32)
    return out.to(device)


def micro_batches(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], max_tokens: int,
                  group: int = 1) -> list[list[int]]:
    """Group sequence indices into micro-batches of at most `max_tokens` padded tokens (at least one prompt
    group each), sorted by length so that sequences of similar length share padding. With `group` = G > 1,
    sequences come in consecutive runs of G sharing one prompt; a run is never split, and its prompt counts
    once (see `completion_logits`)."""
    G = group
    units = len(prompts) // G
    order = sorted(range(units), key=lambda u: (len(prompts[u * G]) + max(len(completions[u * G + j])
                                                                            for j in range(G)), u))
    groups: list[list[int]] = []
    current: list[int] = []
    tp = tc = 0
    for u in order:
        ntp = max(tp, len(prompts[u * G]))
        ntc = max([tc, 1] + [len(completions[u * G + j]) for j in range(G)])
        n = len(current) // G + 1
        if current and n * ntp + n * G * ntc > max_tokens:
            groups.append(current)
            current = []
            ntp, ntc = len(prompts[u * G]), max([1] + [len(completions[u * G + j]) for j in range(G)])
        current += [u * G + j for j in range(G)]
        tp, tc = ntp, ntc
    if current:
        groups.append(current)
    return groups


def completion_logits(model, packed: Packed, group: int = 1) -> torch.Tensor:
    """The model's logits for every completion position: (N, Tc, V).

    With `group` = G > 1 (rows in runs of G sharing one prompt), each prompt is run once, its KV cache
    repeated G times, and the completions run on top of it: the same logits (and gradients, which flow
    through the cache) for a 1/G share of the prompt compute.
    """
    Tc = packed.tokens.shape[1]
    if group == 1:
        out = model(input_ids=packed.input_ids, attention_mask=packed.attention_mask,
                    position_ids=packed.position_ids, logits_to_keep=Tc + 1, use_cache=False)
        return out.logits[:, :-1]  # (N, Tc, V): column Tp−1+t predicts completion token t
    Tp = packed.input_ids.shape[1] - Tc
    first = model(input_ids=packed.input_ids[::group, :Tp], attention_mask=packed.attention_mask[::group, :Tp],
                  position_ids=packed.position_ids[::group, :Tp], logits_to_keep=1, use_cache=True)
    cache = first.past_key_values
    cache.batch_repeat_interleave(group)  # (N/G, ...) → (N, ...)
    rest = model(input_ids=packed.input_ids[:, Tp:], attention_mask=packed.attention_mask,
                 position_ids=packed.position_ids[:, Tp:], past_key_values=cache, use_cache=True)
    head = first.logits.repeat_interleave(group, dim=0)  # (N, 1, V): predicts completion token 0
    return torch.cat([head, rest.logits[:, :-1]], dim=1)  # (N, Tc, V)
