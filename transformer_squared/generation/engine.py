"""The batched generation engine: prompts in, `Completion`s out, in input order.

Prompts are sorted by length and cut into batches of `max_batch_size` (less padding), each batch is left-padded,
prefilled once and decoded one token per step. A prompt repeated within a batch (RL: several samples per
prompt) is prefilled once and its KV cache copied, and the fast path prefills the rows in groups of similar
length (each padded to its own longest), unless per-row callbacks are given (rows may then differ). A row
that finishes (EOS, stop string) is dropped from the running batch so its compute stops too ("compaction").
Two callbacks let per-row state (such as per-row SVF z vectors) follow the rows:

- `on_batch_start(indices)` before each batch's first forward pass: `indices` (LongTensor, (B,)) holds, for each
  row of the batch in order, its position in the `prompts` list;
- `on_reindex(keep)` before the first forward pass after a compaction: `keep` (LongTensor, (n,), ascending)
  holds the positions, among the rows of the previous forward pass, of the rows that remain, in their new order.
  So after `state = state[indices]` at batch start and `state = state[keep]` at each reindex, row i of `state`
  always belongs to row i of the batch being computed.

Which forward runs: `fast_llama.LlamaRunner` (own loop over the model's modules, preallocated KV cache) for
Llama / Mistral / Qwen2, `hf_runner.HFRunner` (the model's HF forward and cache) for everything else.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..errors import T2Error
from .fast_llama import LlamaRunner, fast_path_problem
from .hf_runner import HFRunner
from .packed import packed_linears, packing_problem
from .params import Completion, SamplingParams
from .sampling import StopStrings, next_tokens

# Dropping a finished row copies the KV cache of the rows behind it; skip it when so few steps are left that
# the copy costs more than computing the dead rows would.
_MIN_STEPS_LEFT_TO_COMPACT = 4


@dataclass
class GenerationStats:
    """Where the time of the last `generate` call went (for benchmarks and logs)."""

    prompts: int = 0
    batches: int = 0
    new_tokens: int = 0
    prefill_rows: int = 0  # prompts actually run through prefill (repeats of a prompt share one)
    prefill_s: float = 0.0  # prompt forward passes, incl. the first token's logits
    decode_s: float = 0.0  # one-token steps, incl. sampling and stop checks
    step_rows: list[int] = field(default_factory=list)  # rows computed in each step
    step_s: list[float] = field(default_factory=list)  # seconds of each step

    @property
    def tokens_per_s(self) -> float:
        total = self.prefill_s + self.decode_s
        return self.new_tokens / total if total > 0 else 0.0


def chat_prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of `messages` through the tokenizer's chat template, ending with the assistant prompt."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise T2Error("this tokenizer has no chat template; pass already-formatted text prompts to Engine.generate")
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(out, "keys"):  # transformers 5 returns a BatchEncoding
        out = out["input_ids"]
    if hasattr(out, "tolist"):
        out = out.tolist()
    if out and isinstance(out[0], list):
        out = out[0]
    return list(out)


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of an already-formatted prompt, with the special tokens the tokenizer would prepend (e.g. BOS)
    unless the text already starts with them."""
    plain = tokenizer(text, add_special_tokens=False)["input_ids"]
    full = tokenizer(text, add_special_tokens=True)["input_ids"]
    prefix = []
    for k in range(len(full) - len(plain) + 1):  # where the plain ids sit inside the full ones
        if full[k : k + len(plain)] == plain:
            prefix = full[:k]
            break
    if prefix and plain[: len(prefix)] == prefix:
        return plain
    return prefix + plain


def eos_token_ids(model, tokenizer) -> set[int]:
    """EOS ids from the tokenizer and the model's generation config (either may be one id or a list)."""
    ids: set[int] = set()
    for value in (getattr(tokenizer, "eos_token_id", None),
                  getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif value is not None:
            ids.update(int(v) for v in value)
    return ids


def drop_rows(runner, live: list[int], tokens: torch.Tensor,
              on_reindex: Callable[[torch.LongTensor], None] | None) -> torch.Tensor:
    """Keep only the `live` rows of a running batch: the runner's cache, the per-row state (via `on_reindex`,
    with the kept positions in ascending order) and the next input tokens, which are returned."""
    keep = torch.tensor(live, dtype=torch.long, device=tokens.device)
    runner.keep(keep)
    if on_reindex is not None:
        on_reindex(keep.cpu())
    return tokens[keep]


class Engine:
    """Batched generation with a KV cache for any HF causal LM (fast path for the Llama family).

    Args:
        model: a causal LM; its projection layers may be wrapped (e.g. SVF modules), they are always called as
            modules.
        tokenizer: its tokenizer; may be None when prompts are token ids and no stop strings are used (then
            `Completion.text` is empty).
        max_batch_size: rows decoded together; longer prompt lists run in several batches.
        device, dtype: if given, the model is moved / cast to them in place.
        runner: "auto" (fast path where supported, else HF forward), "fast" (fail if unsupported) or "hf".
        pack_weights: decode with oneDNN-packed copies of the fp32 `nn.Linear` weights on CPU (packed.py: ~1.3-3x
            faster linear layers at decoding batch sizes, one extra copy of those weights in memory, equal up to
            float rounding). None (default) = wherever supported; False = never.
    """

    def __init__(self, model, tokenizer, *, max_batch_size: int = 16, device=None, dtype=None, runner: str = "auto",
                 pack_weights: bool | None = None):
        if max_batch_size < 1:
            raise T2Error(f"max_batch_size must be >= 1, got {max_batch_size}")
        if runner not in ("auto", "fast", "hf"):
            raise T2Error(f"runner must be 'auto', 'fast' or 'hf', got {runner!r}")
        if device is not None or dtype is not None:
            model.to(device=device, dtype=dtype)
        self.model, self.tokenizer = model, tokenizer
        self.max_batch_size = max_batch_size
        self.runner = runner
        self.device = next(model.parameters()).device
        self.eos = eos_token_ids(model, tokenizer)
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = pad if pad is not None else min(self.eos, default=0)  # any id works: padding is masked
        self.stats = GenerationStats()
        self._runners: dict[type, object] = {}
        self.pack_weights = pack_weights is not False and packing_problem(model) is None

    def _runner(self, max_len: int):
        problem = fast_path_problem(self.model, max_len) if self.runner != "hf" else "runner='hf'"
        if problem is not None and self.runner == "fast":
            raise T2Error(f"the fast generation path cannot run this model: {problem}; use runner='auto'")
        kind = LlamaRunner if problem is None else HFRunner
        if not isinstance(self._runners.get(kind), kind):
            self._runners[kind] = LlamaRunner(self.model, fuse_weights=self.pack_weights) if kind is LlamaRunner \
                else HFRunner(self.model)
        return self._runners[kind]

    def _encode(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise T2Error("text prompts need a tokenizer; pass one to Engine or give token ids")
            ids = encode_prompt(self.tokenizer, prompt)
        else:
            ids = [int(i) for i in prompt]
        if not ids:
            raise T2Error("empty prompt: every prompt needs at least one token")
        return ids

    def generate(self, prompts: Sequence[Sequence[int]] | Sequence[str], params: SamplingParams, *,
                 progress: bool = False,
                 on_batch_start: Callable[[torch.LongTensor], None] | None = None,
                 on_reindex: Callable[[torch.LongTensor], None] | None = None) -> list[Completion]:
        """Complete each prompt (token ids, or already-formatted text). Returns completions in input order.

        See the module docstring for when `on_batch_start(indices)` and `on_reindex(keep)` are called.
        Sampling with a `seed` is reproducible for the same prompts, params and `max_batch_size`.
        """
        if params.stop and self.tokenizer is None:
            raise T2Error("stop strings need a tokenizer; pass one to Engine")
        ids = [self._encode(p) for p in prompts]
        order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), ids[i]))  # by length; repeats adjacent
        generator = None
        if params.seed is not None and not params.greedy:
            generator = torch.Generator(device=self.device).manual_seed(params.seed)
        results: list[Completion | None] = [None] * len(ids)
        self.stats = GenerationStats(prompts=len(ids))
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(ids), desc="generate", unit="prompt")
        was_training = self.model.training
        self.model.eval()
        try:
            with packed_linears(self.model, self.pack_weights):
                for start in range(0, len(order), self.max_batch_size):
                    batch = order[start : start + self.max_batch_size]
                    if on_batch_start is not None:
                        on_batch_start(torch.tensor(batch, dtype=torch.long))
                    outs = self._generate_batch([ids[i] for i in batch], params, generator, on_reindex,
                                                share_prefill=on_batch_start is None and on_reindex is None)
                    for i, out in zip(batch, outs):
                        results[i] = out
                    if bar is not None:
                        bar.update(len(batch))
        finally:
            for runner in self._runners.values():
                runner.release()
            self.model.train(was_training)
            if bar is not None:
                bar.close()
        return results

    def generate_chat(self, conversations: Sequence[list[dict]], params: SamplingParams, **kw) -> list[Completion]:
        """`generate` on chat conversations (lists of {"role", "content"}), formatted by the chat template."""
        if self.tokenizer is None:
            raise T2Error("chat prompts need a tokenizer; pass one to Engine")
        return self.generate([chat_prompt_ids(self.tokenizer, c) for c in conversations], params, **kw)

    def _left_pad(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        B, T = len(prompts), max(len(p) for p in prompts)
        input_ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        mask = torch.zeros(B, T, dtype=torch.long)
        for b, p in enumerate(prompts):
            input_ids[b, T - len(p) :] = torch.tensor(p)
            mask[b, T - len(p) :] = 1
        return input_ids.to(self.device), mask.to(self.device)  # (B, T) each

    def _prefill(self, runner, prompts: list[list[int]], max_new_tokens: int, share: bool) -> torch.Tensor:
        """Prefill the batch; returns the first logits (B, V). `share` (no per-row state): a prompt repeated in the
        batch (RL samples several completions per prompt) is computed once and its cache copied to the repeats,
        and the fast runner prefills rows in groups of similar length, each padded only to its own longest."""
        B = len(prompts)
        split = {"split": True} if share and isinstance(runner, LlamaRunner) else {}
        first: dict[tuple[int, ...], int] = {}
        index = [first.setdefault(tuple(p), len(first)) for p in prompts] if share else []
        if share and len(first) < B:
            logits = runner.start(*self._left_pad([list(p) for p in first]), max_new_tokens, capacity=B,
                                  **split)
            if runner.can_drop_rows:  # else this model's cache cannot copy rows: prefill them all below
                index_t = torch.tensor(index, dtype=torch.long, device=self.device)
                runner.repeat(index_t)
                self.stats.prefill_rows += len(first)
                return logits[index_t]
        self.stats.prefill_rows += B
        return runner.start(*self._left_pad(prompts), max_new_tokens, **split)

    @torch.no_grad()
    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams, generator, on_reindex, *,
                        share_prefill: bool = False):
        B, T = len(prompts), max(len(p) for p in prompts)
        stops = StopStrings(self.tokenizer, params.stop)
        generated: list[list[int]] = [[] for _ in range(B)]
        reasons: list[str | None] = [None] * B
        rows = list(range(B))  # batch row of each position of the running batch
        stats = self.stats
        stats.batches += 1
        t0 = time.perf_counter()
        runner = self._runner(T + params.max_new_tokens)
        logits = self._prefill(runner, prompts, params.max_new_tokens, share_prefill)
        for step in range(params.max_new_tokens):
            tokens = next_tokens(logits, params, generator)  # (n,)
            live = []
            check = []
            for pos, (row, tok) in enumerate(zip(rows, tokens.tolist())):
                if reasons[row] is not None:  # finished earlier but not dropped: ignore its token
                    continue
                generated[row].append(tok)
                if tok in self.eos:
                    reasons[row] = "stop"
                else:
                    live.append(pos)
                    check.append(row)
            if stops and check:
                for row, hit in zip(check, stops.hits([generated[r] for r in check])):
                    if hit:
                        reasons[row] = "stop"
                live = [pos for pos in live if reasons[rows[pos]] is None]
            t1 = time.perf_counter()
            if step == 0:
                stats.prefill_s += t1 - t0
            else:
                stats.decode_s += t1 - t0
                stats.step_rows.append(len(rows))
                stats.step_s.append(t1 - t0)
            t0 = t1
            steps_left = params.max_new_tokens - step - 1
            if not live or steps_left == 0:
                break
            if len(live) < len(rows) and steps_left >= _MIN_STEPS_LEFT_TO_COMPACT and runner.can_drop_rows:
                tokens = drop_rows(runner, live, tokens, on_reindex)
                rows = [rows[pos] for pos in live]
            logits = runner.step(tokens)
        stats.new_tokens += sum(len(g) for g in generated)
        return [self._completion(generated[b], reasons[b] or "length", len(prompts[b]), stops) for b in range(B)]

    def _completion(self, ids: list[int], reason: str, prompt_tokens: int, stops: StopStrings) -> Completion:
        if self.tokenizer is None:
            return Completion(text="", token_ids=ids, finish_reason=reason, prompt_tokens=prompt_tokens)
        ended_on_eos = reason == "stop" and ids[-1] in self.eos
        body = ids[:-1] if ended_on_eos else ids
        text = self.tokenizer.decode(body, skip_special_tokens=False)
        if stops and (cut := stops.first_stop(text)) >= 0:
            text = text[:cut]
            # Normally the last token completed the stop string; if the tail check missed an earlier one, the
            # completion still ends (ids included) at the first token that completes it.
            keep = stops.shortest_prefix(body)
            if keep < len(body) or reason == "length":
                ids, reason = body[:keep], "stop"
        return Completion(text=text, token_ids=ids, finish_reason=reason, prompt_tokens=prompt_tokens)
