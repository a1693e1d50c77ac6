"""Batched generation: `Engine` (KV cache, greedy / top-p sampling, stop strings) and the optional vLLM backend.

    from transformer_squared.generation import Engine, SamplingParams
    engine = Engine(model, tokenizer, max_batch_size=16)
    outs = engine.generate_chat([[{"role": "user", "content": "2+2?"}]], SamplingParams(max_new_tokens=32))
    outs[0].text, outs[0].token_ids, outs[0].finish_reason

    with engine.batch() as batch:                   # the one decode loop: rows join and leave between steps
        row = batch.add(prompt_ids, SamplingParams(max_new_tokens=32, seed=1), on_text=print)
        while batch:
            finished = batch.step()

Files: `params.py` (SamplingParams, Completion, GenerationStats), `sampling.py` (greedy / top-p choice, stop
strings), `batch.py` (RunningBatch: the decode loop with per-row params, state, streaming and cancellation),
`detokenize.py` (incremental text), `engine.py` (Engine: `generate` in chunks, `batch`), `fast_llama.py` (Llama /
Mistral / Qwen2 forward over the model's modules with a preallocated KV cache that rows can join),
`hf_runner.py` (any other causal LM through its HF forward), `precision.py` (fast mode: int8 / bf16 products),
`vllm_backend.py` (optional, GPU, merged weights only).

Greedy output equals `model.generate(do_sample=False)` on each prompt alone, token for token, up to fp32
rounding (padding and batch shape change the last bits of the logits, which can flip a rare near-tie).

Performance notes (SmolLM2-135M, fp32, 2-core CPU): a decoding step is mostly matrix products (every weight
is read from memory once per step; the 49152 x 576 LM head alone is ~20% of the products), so the engine's
gains over `model.generate` come from faster products (oneDNN-packed weights, q|k|v and gate|up fused), doing
less besides them (no cache concatenation, no per-step mask building, fewer ops), prefill without most of the
padding, and dropping finished rows; it cannot beat the fp32 product cost, which bench/bench_roofline.py
measures. On an oversubscribed machine torch's 2 OpenMP threads can be several times slower than 1 (threads
wait for each other at every op): there, `torch.set_num_threads(1)` in the application helps; the library does
not change it.
A bfloat16 model (`Engine(..., dtype=torch.bfloat16)`) is ~1.5x faster per step on CPUs with AVX512-BF16, but
its greedy output is no longer identical to fp32's.

Fast mode (`Engine(..., precision="fast")`, precision.py): the linear layers compute in int8 (x86 CPUs without
native bf16) or bf16 (GPUs, CPUs with AMX / AVX512-BF16) from low-precision copies of the fp32 weights, the rest
stays fp32; outputs change, so evaluation defaults to `precision="exact"`. For RL rollouts:
`Engine(policy.generation_model, tokenizer, max_batch_size=B, precision="fast")` (the merged W' is re-quantised
after each update, when the weights change).
"""

from .batch import Row, RunningBatch
from .engine import Engine, chat_prompt_ids, encode_prompt, eos_token_ids
from .params import Completion, GenerationStats, SamplingParams
from .vllm_backend import VLLMEngine

__all__ = ["Completion", "Engine", "GenerationStats", "Row", "RunningBatch", "SamplingParams", "VLLMEngine",
           "chat_prompt_ids", "encode_prompt", "eos_token_ids"]
