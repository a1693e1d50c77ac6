"""Batched decoding for any HF causal LM through its own forward and cache (the generic path).

Left padding with an attention mask and `position_ids = cumsum(mask) - 1`, as `model.generate` does, so greedy
output matches it. Rows are dropped from the cache when the cache supports `batch_select_indices`
(`DynamicCache` does); otherwise finished rows ride along until their batch ends. Rows cannot join a running
batch (`can_join` is False: caches differ by model, some with sliding-window or static layers), so with this
runner new rows start when the running ones have finished.
"""

from __future__ import annotations

import inspect

import torch


class HFRunner:
    """Prefill + step-by-step decode of one batch with `model.forward` and the model's own KV cache."""

    can_join = False

    def __init__(self, model):
        self.model = model
        params = inspect.signature(model.forward).parameters
        self.accepts_position_ids = "position_ids" in params
        self.accepts_logits_to_keep = "logits_to_keep" in params
        self.cache = None
        self.n = 0
        self.prefilled = 0  # prompts run through the last prefill

    def _forward(self, input_ids, position_ids, cache):
        kwargs = dict(input_ids=input_ids, attention_mask=self.mask, past_key_values=cache, use_cache=True)
        if self.accepts_position_ids:
            kwargs["position_ids"] = position_ids
        if self.accepts_logits_to_keep:
            kwargs["logits_to_keep"] = 1
        out = self.model(**kwargs)
        self.cache = out.past_key_values
        return out.logits[:, -1]  # (B, V)

    @torch.no_grad()
    def start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int, *,
              capacity: int | None = None) -> torch.Tensor:
        """Prefill a left-padded batch; returns the logits (B, V) for the first new token. (`capacity` is
        accepted for the runner interface; the HF cache grows as needed.)"""
        self.mask = attention_mask.long()  # (B, T), grows by one column per step
        pos = (self.mask.cumsum(-1) - 1).masked_fill(self.mask == 0, 0)  # (B, T), as in `generate`
        self.pos = pos[:, -1:] + 1  # (B, 1)
        self.n = self.prefilled = input_ids.shape[0]
        return self._forward(input_ids, pos, None)

    @torch.no_grad()
    def join(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, steps: int, *,
             capacity: int | None = None, split: bool = False, repeat: torch.Tensor | None = None) -> torch.Tensor:
        """`start`, for an empty batch only (see the module docstring). With `repeat` (R,), row j becomes a copy
        of prompt repeat[j] (one prefill per distinct prompt where the cache can copy rows, else all of them)."""
        if self.n:
            raise RuntimeError("HFRunner cannot add rows to a running batch; wait until it has finished")
        logits = self.start(input_ids, attention_mask, steps)
        if repeat is None:
            return logits
        if self.can_drop_rows:
            self.keep(repeat)
            return logits[repeat]
        return self.start(input_ids[repeat], attention_mask[repeat], steps)  # this cache cannot copy rows

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per live row (n,); returns the logits (n, V) for the next one."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
        logits = self._forward(tokens[:, None], self.pos, self.cache)
        self.pos = self.pos + 1
        return logits

    @property
    def can_drop_rows(self) -> bool:
        return hasattr(getattr(self, "cache", None), "batch_select_indices")

    def release(self) -> None:
        """Free the KV cache; the batch is empty afterwards."""
        self.cache = None
        self.n = 0

    def keep(self, keep: torch.Tensor) -> None:
        """Keep only rows `keep` (positions among the live rows)."""
        self.cache.batch_select_indices(keep)
        self.mask, self.pos = self.mask[keep], self.pos[keep]
        self.n = len(keep)
