"""Optional vLLM backend with the `Engine` interface, for GPU users. Untested here (no GPU, no vLLM).

vLLM loads weights from a model directory, so it serves *merged* weights: merge an expert into the base model
and export it first (W' = U diag(sigma * z) V^T baked into the linear layers), then point `VLLMEngine` at that
directory. Per-row experts are not possible, so the per-row callbacks (`on_batch_start`, `on_reindex`) are
refused. `import vllm` happens on construction; without it you get a `T2Error` saying `pip install vllm`.

Differences from `Engine`: batching, sorting and scheduling are vLLM's (max_batch_size maps to max_num_seqs);
a seed gives prompt i the per-request seed `seed + i`; `token_ids` are what vLLM reports (the sampled ids,
EOS included when sampled).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import T2Error
from .engine import chat_prompt_ids, encode_prompt
from .params import Completion, SamplingParams


class VLLMEngine:
    """`Engine.generate` / `generate_chat` on vLLM. `model` is a path or hub id of (merged) weights."""

    def __init__(self, model: str, tokenizer=None, *, max_batch_size: int = 256, device=None, dtype=None, **llm_kwargs):
        try:
            import vllm
        except ImportError:
            raise T2Error("the vLLM backend needs vLLM: pip install vllm (GPU only), or use Engine") from None
        if not isinstance(model, str):
            raise T2Error("VLLMEngine takes a model directory or hub id; merge the expert and export the model first")
        self._vllm = vllm
        kwargs = dict(model=model, max_num_seqs=max_batch_size, **llm_kwargs)
        if dtype is not None:
            kwargs["dtype"] = str(dtype).removeprefix("torch.")
        if device is not None:
            kwargs["device"] = str(device)
        self.llm = vllm.LLM(**kwargs)
        self.tokenizer = tokenizer if tokenizer is not None else self.llm.get_tokenizer()

    def generate(self, prompts: Sequence[Sequence[int]] | Sequence[str], params: SamplingParams, *,
                 progress: bool = False, on_batch_start=None, on_reindex=None) -> list[Completion]:
        """Same contract as `Engine.generate`, minus per-row callbacks."""
        if on_batch_start is not None or on_reindex is not None:
            raise T2Error("the vLLM backend serves merged weights only; per-row callbacks need Engine")
        ids = [encode_prompt(self.tokenizer, p) if isinstance(p, str) else [int(t) for t in p] for p in prompts]
        sampling = [
            self._vllm.SamplingParams(
                max_tokens=params.max_new_tokens, temperature=params.temperature, top_p=params.top_p,
                stop=list(params.stop) or None, seed=None if params.seed is None else params.seed + i,
                skip_special_tokens=False)
            for i in range(len(ids))
        ]
        requests = [{"prompt_token_ids": p} for p in ids]
        outputs = self.llm.generate(requests, sampling, use_tqdm=progress)
        results = []
        for p, out in zip(ids, outputs):
            o = out.outputs[0]
            reason = "length" if o.finish_reason == "length" else "stop"
            results.append(Completion(text=o.text, token_ids=list(o.token_ids), finish_reason=reason,
                                      prompt_tokens=len(p)))
        return results

    def generate_chat(self, conversations: Sequence[list[dict]], params: SamplingParams, **kw) -> list[Completion]:
        """`generate` on chat conversations, formatted by the chat template."""
        return self.generate([chat_prompt_ids(self.tokenizer, c) for c in conversations], params, **kw)
