"""The generation engine: prompts in, `Completion`s out, in input order; `Engine.batch` for rows that come and go.

`generate` sorts prompts by length and decodes them in one `RunningBatch` (batch.py: the one decode loop, shared
with the server) of up to `max_batch_size` rows, shortest prompts first: rows that finish (EOS, stop string,
length) leave the batch, and waiting prompts join it whenever a quarter of it is free ("continuous batching":
the batch never waits for its longest row; newcomers are prefilled together and appended to the running KV
cache). A prompt repeated among the newcomers (RL: several samples per prompt) is prefilled once and its KV
cache copied, and the fast path prefills the newcomers in groups of similar length (each padded to its own
longest), unless per-row callbacks are given (rows may then differ). The generic HF runner cannot take rows into
a running batch: with it, prompts start when the batch is empty (static batches).
Two callbacks let per-row state (such as per-row SVF z vectors) follow the rows:

- `on_batch_start(indices)` before a forward pass whose rows are not just those of the previous pass minus the
  ones that left (the first pass, the prefill of newcomers, the first step after they joined): `indices`
  (LongTensor, (B,)) holds, for each row of that pass in order, its position in the `prompts` list;
- `on_reindex(keep)` before the first forward pass after rows only left: `keep` (LongTensor, (n,), ascending)
  holds the positions, among the rows of the previous forward pass, of the rows that remain, in their new order.
  So after `state = state_of_prompts[indices]` at each start and `state = state[keep]` at each reindex, row i
  of `state` always belongs to row i of the batch being computed.

Which forward runs: `fast_llama.LlamaRunner` (own loop over the model's modules, preallocated KV cache that
rows can join) for Llama / Mistral / Qwen2, `hf_runner.HFRunner` (the model's HF forward and cache) for
everything else.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..errors import T2Error
from .batch import RunningBatch
from .fast_llama import LlamaRunner, fast_path_problem
from .hf_runner import HFRunner
from .packed import packing_problem
from .params import Completion, GenerationStats, SamplingParams
from .precision import resolve_precision, weight_device_dtype


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
            float rounding). None (default) = wherever supported; False = never (exact precision only).
        precision: what the linear layers compute in (precision.py): "exact" (default: the model's weights),
            "int8" (CPU, dynamic quantisation), "bf16", or "fast" (the faster of those this device has, else
            exact). `self.compute_precision` is the one chosen, `self.precision_reason` why; `set_precision`
            changes it later.
    """

    def __init__(self, model, tokenizer, *, max_batch_size: int = 16, device=None, dtype=None, runner: str = "auto",
                 pack_weights: bool | None = None, precision: str = "exact"):
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
        self.pack_weights = pack_weights is not False and packing_problem(model) is None
        self.set_precision(precision)

    def set_precision(self, precision: str) -> None:
        """Compute the linear layers in `precision` from the next batch on (see the class docstring); an int8 or
        bf16 that this device cannot run raises `T2Error`. Low-precision copies of the weights are made at the
        first batch that uses them and kept (`packed.unpack(model)` frees them)."""
        self.compute_precision, self.precision_reason = resolve_precision(precision, *weight_device_dtype(self.model))
        self.precision = precision

    @property
    def precision_info(self) -> dict:
        """{"precision": requested, "compute_precision": chosen, "reason": why}: for summaries and reports."""
        return {"precision": self.precision, "compute_precision": self.compute_precision,
                "reason": self.precision_reason}

    def new_runner(self, max_len: int):
        """A runner (its own KV cache) for sequences up to `max_len` tokens: the fast path where it applies."""
        problem = fast_path_problem(self.model, max_len) if self.runner != "hf" else "runner='hf'"
        if problem is not None and self.runner == "fast":
            raise T2Error(f"the fast generation path cannot run this model: {problem}; use runner='auto'")
        if problem is None:
            low = self.compute_precision != "exact"
            return LlamaRunner(self.model, fuse_weights=self.pack_weights or low, precision=self.compute_precision)
        return HFRunner(self.model)

    def runner_fits(self, runner, max_len: int) -> bool:
        """Whether `runner` can carry sequences up to `max_len` tokens (the fast path has model limits)."""
        return not isinstance(runner, LlamaRunner) or fast_path_problem(self.model, max_len) is None

    def encode(self, prompt) -> list[int]:
        """Token ids of a prompt given as ids or as already-formatted text."""
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise T2Error("text prompts need a tokenizer; pass one to Engine or give token ids")
            ids = encode_prompt(self.tokenizer, prompt)
        else:
            ids = [int(i) for i in prompt]
        if not ids:
            raise T2Error("empty prompt: every prompt needs at least one token")
        return ids

    def batch(self, *, capacity: int | None = None, on_rows: Callable[[list], None] | None = None,
              on_reindex: Callable[[torch.LongTensor], None] | None = None) -> RunningBatch:
        """A `RunningBatch` over this engine's model: rows with their own params join and leave between steps
        (batch.py). Use it in a `with` block. `capacity`: rows to allocate the KV cache for (default
        `max_batch_size`; more rows still fit, by reallocating). `on_rows(states)` / `on_reindex(keep)`: keep
        per-row state (per-row SVF z) in step with the rows of each forward pass, see batch.py. Its timings
        are in its own `stats` (totals only)."""
        return RunningBatch(self, capacity=capacity, on_rows=on_rows, on_reindex=on_reindex)

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
        ids = [self.encode(p) for p in prompts]
        self.stats = GenerationStats(prompts=len(ids))
        if not ids:
            return []
        order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), ids[i]))  # by length; repeats adjacent
        generator = None
        if params.seed is not None and not params.greedy:
            generator = torch.Generator(device=self.device).manual_seed(params.seed)  # one for the whole call
        results: list[Completion | None] = [None] * len(ids)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(ids), desc="generate", unit="prompt")
        callbacks = on_batch_start is not None or on_reindex is not None
        B = self.max_batch_size
        on_rows = (lambda states: on_batch_start(torch.tensor(states, dtype=torch.long))) \
            if on_batch_start is not None else (lambda states: None)
        run = RunningBatch(self, self.stats, capacity=min(B, len(order)), on_rows=on_rows if callbacks else None,
                           on_reindex=(on_reindex or (lambda keep: None)) if callbacks else None)
        try:
            with run:
                queue = list(reversed(order))  # popped from the end: shortest prompts first
                while queue or run:
                    # Refill: newcomers join once a quarter of the batch is free (or it is empty), so a batch
                    # never waits for its longest row and joins are prefilled a few rows at a time.
                    # (The generic HF runner takes newcomers only into an empty batch: it refills when empty.)
                    free = B - len(run)
                    if queue and (not run or (run.can_join and free >= max(1, B // 4))):
                        self.stats.batches += 1
                        for _ in range(min(free, len(queue))):
                            i = queue.pop()
                            run.add(ids[i], params, state=i, generator=generator)
                    for row in run.step():  # the rows that finished: `state` is the prompt's position
                        results[row.state] = row.completion()
                        if bar is not None:
                            bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        return results

    def generate_chat(self, conversations: Sequence[list[dict]], params: SamplingParams, **kw) -> list[Completion]:
        """`generate` on chat conversations (lists of {"role", "content"}), formatted by the chat template."""
        if self.tokenizer is None:
            raise T2Error("chat prompts need a tokenizer; pass one to Engine")
        return self.generate([chat_prompt_ids(self.tokenizer, c) for c in conversations], params, **kw)

    def left_pad(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts as one left-padded batch on the model's device: (input_ids, attention_mask), (B, T) each."""
        B, T = len(prompts), max(len(p) for p in prompts)
        input_ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        mask = torch.zeros(B, T, dtype=torch.long)
        for b, p in enumerate(prompts):
            input_ids[b, T - len(p) :] = torch.tensor(p)
            mask[b, T - len(p) :] = 1
        return input_ids.to(self.device), mask.to(self.device)  # (B, T) each
