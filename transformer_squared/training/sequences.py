"""Teacher-forced passes over (prompt, completion) pairs: packing, micro-batching, logits for completions only.

Layout of a packed micro-batch (the generation engine's, so positions match what was sampled):

    [pad pad p0 p1 p2 | c0 c1 c2 pad]      prompts left-padded to Tp, completions right-padded to Tc

Position ids count real tokens only. Every completion token c_t is predicted at column Tp−1+t, so one
`logits_to_keep=Tc+1` slice gives all the predictions the losses need and the LM head never runs on prompt
tokens (for SmolLM2 the head is a fifth of the model's multiply-adds per token). With G samples per prompt
the prompt runs once per group and the samples continue from its (repeated) KV cache.

The losses need only the log-prob of each completion token, not the (N, Tc, V) logits: `completion_logprobs`
takes the decoder's hidden states and applies the LM head and the log-softmax a chunk of positions at a time,
under activation checkpointing, so a chunk's logits live only while it is computed (and once more in the
backward, which recomputes them). With Qwen2.5's 151,936-token vocabulary a group of 4 samples x 512 tokens held
~1.2 GB per logits-sized tensor, several at once (logits, tempered logits, their gradients): most of an RL step's
memory. The price is one more LM-head product per completion token in the backward. Models whose logits are not
`head(decoder(...).last_hidden_state)` (soft-capping, logit scales, wrappers) take the full-logits path; this is
checked numerically once per model, not assumed.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from functools import partial
from typing import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .losses import sampling_logprobs

CHUNK_ELEMENTS = 1 << 24  # logits per chunk (64 MB in fp32): ~110 positions of Qwen2.5's vocabulary


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


def _predictions(call, packed: Packed, group: int) -> torch.Tensor:
    """What `call` outputs at the positions that predict the completion tokens: (N, Tc, ...).

    `call(keep, **inputs)` runs a forward pass and returns (its output at the last `keep` positions, all of them
    when `keep` is 0; the KV cache). With `group` = G > 1 (rows in runs of G sharing one prompt), each prompt is
    run once, its KV cache repeated G times, and the completions run on top of it: the same outputs (and
    gradients, which flow through the cache) for a 1/G share of the prompt compute.
    """
    Tc = packed.tokens.shape[1]
    if group == 1:
        out, _ = call(Tc + 1, input_ids=packed.input_ids, attention_mask=packed.attention_mask,
                      position_ids=packed.position_ids, use_cache=False)
        return out[:, :-1]  # column Tp−1+t predicts completion token t
    Tp = packed.input_ids.shape[1] - Tc
    first, cache = call(1, input_ids=packed.input_ids[::group, :Tp], attention_mask=packed.attention_mask[::group, :Tp],
                        position_ids=packed.position_ids[::group, :Tp], use_cache=True)
    cache.batch_repeat_interleave(group)  # (N/G, ...) → (N, ...)
    rest, _ = call(0, input_ids=packed.input_ids[:, Tp:], attention_mask=packed.attention_mask,
                   position_ids=packed.position_ids[:, Tp:], past_key_values=cache, use_cache=True)
    head = first.repeat_interleave(group, dim=0)  # (N, 1, ...): predicts completion token 0
    return torch.cat([head, rest[:, :-1]], dim=1)


def completion_logits(model, packed: Packed, group: int = 1) -> torch.Tensor:
    """The model's logits for every completion position: (N, Tc, V) (`_predictions`: a group's prompt runs once)."""
    def call(keep: int, **inputs):
        out = model(**inputs, logits_to_keep=keep)  # 0 keeps every position
        return out.logits, out.past_key_values

    return _predictions(call, packed, group)


_SPLIT_OK: "weakref.WeakKeyDictionary[nn.Module, bool]" = weakref.WeakKeyDictionary()


def _split_head(model, packed: Packed):
    """(decoder, head) when `model`'s logits are head(decoder(...).last_hidden_state), else None. Checked once
    per model on the first row of a micro-batch (a few tokens, no grad): nothing is assumed of the architecture
    beyond `get_decoder()` / `get_output_embeddings()`."""
    try:
        decoder, head = model.get_decoder(), model.get_output_embeddings()
    except (AttributeError, NotImplementedError, TypeError):
        return None
    if decoder is None or not isinstance(head, nn.Linear) or head.bias is not None:
        return None
    ok = _SPLIT_OK.get(model)
    if ok is None:
        n = min(8, packed.input_ids.shape[1])
        args = dict(input_ids=packed.input_ids[:1, -n:], attention_mask=packed.attention_mask[:1, -n:],
                    position_ids=packed.position_ids[:1, -n:], use_cache=False)
        # in eval mode (dropout would make the two passes differ) and with the RNG untouched (a resumed run
        # must draw what the uninterrupted one drew)
        modes = {m: m.training for m in model.modules()}
        try:
            model.eval()
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                full = model(**args).logits.float()
                split = head(decoder(**args).last_hidden_state).float()
        finally:
            for m, training in modes.items():
                m.training = training
        ok = full.shape == split.shape and torch.allclose(full, split, rtol=1e-4, atol=1e-4)
        _SPLIT_OK[model] = ok
    return (decoder, head) if ok else None


def _completion_hidden(decoder, packed: Packed, group: int) -> torch.Tensor:
    """The decoder's last hidden states at the positions `completion_logits` takes the logits of: (N, Tc, H)."""
    def call(keep: int, **inputs):
        out = decoder(**inputs)
        h = out.last_hidden_state
        return (h[:, -keep:] if keep else h), out.past_key_values

    return _predictions(call, packed, group)


def _chunk_logprobs(h: torch.Tensor, tokens: torch.Tensor, head: nn.Module, temperature: float,
                    top_p: float) -> torch.Tensor:
    """(rows, H), (rows,) → (rows,): one chunk's log-probs (the head's logits exist only in here)."""
    return sampling_logprobs(head(h)[None], tokens[None], temperature, top_p)[0]


def completion_logprobs(model, packed: Packed, group: int = 1, temperature: float = 0.0,
                        top_p: float = 1.0) -> torch.Tensor:
    """log π_sample of every completion token (`losses.sampling_logprobs`; temperature 0: plain log π), (N, Tc),
    differentiable, equal to `sampling_logprobs(completion_logits(...), ...)` up to float rounding, without
    holding the (N, Tc, V) logits (see the module docstring)."""
    split = _split_head(model, packed)
    if split is None:
        return sampling_logprobs(completion_logits(model, packed, group), packed.tokens, temperature, top_p)
    decoder, head = split
    h = _completion_hidden(decoder, packed, group)  # (N, Tc, H)
    N, Tc, H = h.shape
    flat_h, flat_t = h.reshape(N * Tc, H), packed.tokens.reshape(N * Tc)
    rows = max(1, CHUNK_ELEMENTS // head.out_features)
    chunk = partial(checkpoint, _chunk_logprobs, use_reentrant=False) if torch.is_grad_enabled() else _chunk_logprobs
    parts = [chunk(flat_h[i:i + rows], flat_t[i:i + rows], head, temperature, top_p) for i in range(0, N * Tc, rows)]
    return torch.cat(parts).view(N, Tc)
