"""Benchmark the generation engine against `model.generate`: tokens/s at batch 1, 16 and 64.

Both decode the same chat prompts greedily (EOS on, fp32) in one process, engine first, then `generate` on the
same left-padded batch, then the engine once more without packed weights (`pack_weights=False`: the plain
MKL sgemm path that `generate` uses too). Reported per batch size:
- tokens/s: generated tokens (up to and including each row's EOS) / wall seconds, prefill included;
- s/step: median seconds of one decoding step while the batch is still full (compaction shrinks it later);
- greedy_match: fraction of rows whose engine ids equal `generate`'s (fp32 rounding can flip a rare near-tie).
`model.generate` keeps computing finished rows until the whole batch ends; the engine drops them, which is
part of its speed-up on real prompts whose answers differ in length. A last row times RL-style rollouts
(--rollout rows: prompts repeated 8 times, sampled at temperature 1), where the engine prefills each prompt once.

    python bench/bench_generation.py [--model smollm2-135m-instruct] [--batch-sizes 1,16,64] [--new-tokens 64]
                                     [--new-tokens-64 32] [--rollout 16] [--threads N] [--bf16] [--repeat R]
                                     [--out bench/out/generation.json]

With --repeat R, each batch size runs engine, unpacked engine and `generate` R times in turn and reports each
one's run of median tokens/s (the machines here swing by +-20% from minute to minute; alternating the three
spreads that over all of them).

Timings on a shared 2-core machine depend on load (recorded as loadavg_start / loadavg_end): with other
processes running, torch's 2 OpenMP threads can be several times slower than 1 (`--threads 1`).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench scripts' shared helpers
from cpuinfo import cpu_name  # noqa: E402

FALLBACK_DIR = "/tmp/smol_hf"  # a plain HF copy of SmolLM2-135M-Instruct, used if the alias loader is missing

NAMES = ("Ava", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana")
ITEMS = ("apples", "pencils", "marbles", "stickers", "cookies", "books", "shells", "cards")
EXTRA = ("", " On the way home, {name} finds {c} more {item} on a bench and keeps them.",
         " A week later, {friend} returns {c} of the {item} and asks how many {name} had at the start.")


def bench_prompts(n: int) -> list[list[dict]]:
    """`n` chat prompts of ~90-140 tokens (with SmolLM2's template): templated arithmetic word problems."""
    convs = []
    for i in range(n):
        name, friend, item = NAMES[i % 8], NAMES[(i + 3) % 8], ITEMS[(i // 8) % 8]
        a, b, c, d = 3 + i % 7, 4 + i % 5, 2 + i % 4, 2 + i % 3
        text = (f"Solve this problem step by step and end with 'The answer is N.' {name} buys {a} boxes of {item}. "
                f"Each box holds {b} {item}. {name} gives {c} {item} to {friend}, then sells half of the rest "
                f"for ${d} each.{EXTRA[i % 3].format(name=name, friend=friend, item=item, c=c)} How much money "
                f"does {name} make, and how many {item} are left?")
        convs.append([{"role": "user", "content": text}])
    return convs


def load(spec: str):
    """(model, tokenizer, description): the alias loader when it exists, else a plain HF directory."""
    try:
        from transformer_squared.models import load_model, set_quiet_transformers
    except ImportError:
        load_model = None
    if load_model is not None:
        spec = "smollm2-135m-instruct" if spec == "default" else spec
        set_quiet_transformers()
        lm = load_model(spec)
        return lm.model, lm.tokenizer, spec
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = FALLBACK_DIR if spec == "default" else spec
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path), path


class StepTimer:
    """A no-op logits processor that timestamps every decoding step of `model.generate`."""

    def __init__(self):
        self.times: list[float] = []

    def __call__(self, input_ids, scores):
        self.times.append(time.perf_counter())
        return scores


def run_generate(model, prompts: list[list[int]], new_tokens: int, pad_id: int, eos: set[int],
                 temperature: float = 0.0) -> dict:
    from transformers import LogitsProcessorList

    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, p in enumerate(prompts):
        ids[b, T - len(p):] = torch.tensor(p)
        mask[b, T - len(p):] = 1
    timer = StepTimer()
    with torch.inference_mode():
        t0 = time.perf_counter()
        sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature else \
            dict(do_sample=False)
        out = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, pad_token_id=pad_id,
                             logits_processor=LogitsProcessorList([timer]), **sampling)
        seconds = time.perf_counter() - t0
    rows = []
    for row in out[:, T:].tolist():
        cut = next((k + 1 for k, t in enumerate(row) if t in eos), len(row))  # up to and including EOS
        rows.append(row[:cut])
    tokens = sum(len(r) for r in rows)
    steps = [b - a for a, b in zip(timer.times, timer.times[1:])]
    return {"rows": rows, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "prefill_s": timer.times[0] - t0, "s_per_step": statistics.median(steps) if steps else None}


def run_engine(engine, prompts: list[list[int]], new_tokens: int, temperature: float = 0.0) -> dict:
    from transformer_squared.generation import SamplingParams

    t0 = time.perf_counter()
    outs = engine.generate(prompts, SamplingParams(max_new_tokens=new_tokens, temperature=temperature, seed=0))
    seconds = time.perf_counter() - t0
    st = engine.stats
    full = [s for r, s in zip(st.step_rows, st.step_s) if r == len(prompts)]
    tokens = sum(len(o.token_ids) for o in outs)
    return {"rows": [o.token_ids for o in outs], "tokens": tokens, "seconds": seconds,
            "tokens_per_s": tokens / seconds, "prefill_s": st.prefill_s, "decode_s": st.decode_s,
            "s_per_step": statistics.median(full) if full else None,
            "s_per_step_mean": st.decode_s / len(st.step_s) if st.step_s else None,
            "prefill_rows": st.prefill_rows}


def median_run(runs: list[dict]) -> dict:
    """The run with the median tokens/s (the first run's ids kept for the match), with every run's tokens/s."""
    best = sorted(runs, key=lambda r: r["tokens_per_s"])[len(runs) // 2]
    return {**best, "rows": runs[0]["rows"], "tokens_per_s_runs": [r["tokens_per_s"] for r in runs]}


def save_results(res: dict, out: str) -> None:
    """Record the closing load average, write `res` as JSON to `out` atomically and say so."""
    from transformer_squared.fileio import atomic_write_json

    res["loadavg_end"] = os.getloadavg()[0]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, res)
    print(f"load average {res['loadavg_start']:.1f} -> {res['loadavg_end']:.1f}; wrote {out}", file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="alias, directory or hub id (default: embedded SmolLM2)")
    ap.add_argument("--batch-sizes", default="1,16,64")
    ap.add_argument("--new-tokens", type=int, default=64, help="max new tokens per prompt")
    ap.add_argument("--new-tokens-64", type=int, default=32,
                    help="max new tokens at batch >= 64 (model.generate is slow there)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--rollout", type=int, default=16,
                    help="also time RL-style sampling: this many rows, 8 samples per prompt (0: skip)")
    ap.add_argument("--bf16", action="store_true", help="also time the engine on a bfloat16 copy of the model")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each configuration, alternating (median kept)")
    ap.add_argument("--out", default="bench/out/generation.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformer_squared.generation import Engine, SamplingParams, chat_prompt_ids

    model, tok, name = load(args.model)
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    convs = bench_prompts(max(sizes))
    prompts = [chat_prompt_ids(tok, c) for c in convs]
    engine = Engine(model, tok)
    eos, pad_id = engine.eos, engine.pad_id
    res = {"model": name, "torch": torch.__version__, "repeat": args.repeat,
           "engine_packed_weights": engine.pack_weights, "threads": torch.get_num_threads(), "cpu": cpu_name(),
           "cpu_count": os.cpu_count(), "loadavg_start": os.getloadavg()[0],
           "engine_path": type(engine.new_runner(256)).__name__,
           "prompt_tokens_mean": statistics.mean(len(p) for p in prompts), "runs": {}}
    if res["loadavg_start"] > (os.cpu_count() or 1) and res["threads"] > 1:
        print(f"warning: load average {res['loadavg_start']:.1f} on {os.cpu_count()} cores: with "
              f"{res['threads']} threads, timings will be slow and noisy (try --threads 1)", file=sys.stderr)

    # Warm-up: first calls pay for allocator growth and kernel selection.
    engine.generate(prompts[:2], SamplingParams(max_new_tokens=4))
    run_generate(model, prompts[:2], 4, pad_id, eos)

    header = f"{'batch':>5} {'new':>4} | {'engine tok/s':>12} {'s/step':>7} | {'generate tok/s':>14} {'s/step':>7} | " \
             f"{'speedup':>7} {'match':>5}"
    print(header)
    print("-" * len(header))
    for B in sizes:
        n_new = args.new_tokens_64 if B >= 64 else args.new_tokens
        batch = prompts[:B]
        eng = Engine(model, tok, max_batch_size=B)
        runs = [(run_engine(eng, batch, n_new),
                 run_engine(Engine(model, tok, max_batch_size=B, pack_weights=False), batch, n_new),
                 run_generate(model, batch, n_new, pad_id, eos)) for _ in range(max(1, args.repeat))]
        e, u, g = (median_run([r[k] for r in runs]) for k in range(3))
        e_rows, u_rows, g_rows = e.pop("rows"), u.pop("rows"), g.pop("rows")
        match = sum(a == b for a, b in zip(e_rows, g_rows)) / B
        u["greedy_match"] = sum(a == b for a, b in zip(u_rows, g_rows)) / B
        row = {"new_tokens": n_new, "engine": e, "engine_unpacked": u, "generate": g,
               "speedup": e["tokens_per_s"] / g["tokens_per_s"],
               "speedup_unpacked": u["tokens_per_s"] / g["tokens_per_s"], "greedy_match": match}
        if args.bf16:
            # A copy (the fp32 model stays as it is); it leaves the engine's packed weights behind (packed.py).
            m16 = copy.deepcopy(model).to(torch.bfloat16)
            b16 = run_engine(Engine(m16, tok, max_batch_size=B), batch, n_new)
            b16["same_as_fp32"] = sum(a == b for a, b in zip(b16.pop("rows"), e_rows)) / B
            row["engine_bf16"] = b16
            del m16
        res["runs"][str(B)] = row
        fmt = lambda v: f"{v:.3f}" if v is not None else "-"
        print(f"{B:>5} {n_new:>4} | {e['tokens_per_s']:>12.1f} {fmt(e['s_per_step']):>7} | "
              f"{g['tokens_per_s']:>14.1f} {fmt(g['s_per_step']):>7} | {row['speedup']:>6.2f}x {match:>5.2f}",
              flush=True)
        print(f"{'':>5} engine without packed weights: {u['tokens_per_s']:.1f} tok/s, s/step {fmt(u['s_per_step'])}, "
              f"{row['speedup_unpacked']:.2f}x, match {u['greedy_match']:.2f}")
        if args.bf16:
            b16 = row["engine_bf16"]
            print(f"{'':>5} bf16 engine: {b16['tokens_per_s']:.1f} tok/s, s/step {fmt(b16['s_per_step'])}, "
                  f"same ids as fp32: {b16['same_as_fp32']:.2f}")
    if args.rollout:
        # RL rollouts: each prompt sampled several times (temperature 1); the engine prefills each prompt once.
        G, P = 8, max(1, args.rollout // 8)
        batch = [p for p in prompts[:P] for _ in range(G)]
        e = run_engine(Engine(model, tok, max_batch_size=len(batch)), batch, args.new_tokens, temperature=1.0)
        g = run_generate(model, batch, args.new_tokens, pad_id, eos, temperature=1.0)
        e.pop("rows"), g.pop("rows")
        res["rollout"] = {"prompts": P, "samples_per_prompt": G, "new_tokens": args.new_tokens, "engine": e,
                          "generate": g, "speedup": e["tokens_per_s"] / g["tokens_per_s"]}
        print(f"rollout {P}x{G} sampled, {args.new_tokens} new: engine {e['tokens_per_s']:.1f} tok/s, generate "
              f"{g['tokens_per_s']:.1f} tok/s: {res['rollout']['speedup']:.2f}x", flush=True)
    save_results(res, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
