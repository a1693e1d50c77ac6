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
                                     [--variants engine,unpacked,generate] [--compiled-generate 16]
                                     [--precision exact|fast|int8|bf16] [--out bench/out/generation.json]

`--variants` leaves out the unpacked engine or `generate` (shorter runs, e.g. bench/summary.py). With
`--compiled-generate B[,B]`, at those batch sizes transformers' own fastest path runs last: `model.generate` with
a static KV cache and its decoding step compiled by `torch.compile` (inductor, which needs a C compiler; forced on
CPU through `CompileConfig._compile_all_devices`). Its first call compiles (reported as `compile_s`) and is not
timed; the second is. If compiling fails, the JSON keeps the one-line reason instead.

With `--precision P` (P other than exact), the engine also runs in that precision (generation/precision.py: fast =
int8 or bf16, whichever this machine has) at every batch size, in turn with the others, and on the rollouts;
the JSON gets `precision` ({requested, compute_precision, reason, cpu_features, warmup_s}) and, per batch size,
`runs[B]["engine_fast"]`: the engine's keys plus precision, compute_precision, same_as_exact (rows whose ids
equal the exact engine's), speedup_vs_engine (its tokens/s over the exact engine's), step_speedup_vs_engine
(exact s/step over its s/step) and speedup_vs_generate; `rollout["engine_fast"]` likewise.

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
                 temperature: float = 0.0, **generate_kw) -> dict:
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
                             logits_processor=LogitsProcessorList([timer]), **sampling, **generate_kw)
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


def run_compiled_generate(model, prompts: list[list[int]], new_tokens: int, pad_id: int, eos: set[int]) -> dict:
    """`model.generate` with a static KV cache and the decoding step compiled (transformers' auto-compile, forced on
    CPU): the first call compiles and is not timed, the second is. On failure: {"error": its one-line reason}."""
    from transformers import CompileConfig

    config = CompileConfig(mode="default", dynamic=False)  # "reduce-overhead" means CUDA graphs
    config._compile_all_devices = True  # transformers compiles on GPUs only unless told so
    kw = dict(cache_implementation="static", compile_config=config)
    try:
        t0 = time.perf_counter()
        run_generate(model, prompts, new_tokens, pad_id, eos, **kw)  # same shapes as the timed call: no recompile
        first_s = time.perf_counter() - t0
        out = run_generate(model, prompts, new_tokens, pad_id, eos, **kw)
    except Exception as e:  # noqa: BLE001 - a missing compiler or an unsupported op is a result here, not a crash
        return {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]}
    finally:
        if hasattr(model, "_compiled_call"):
            del model._compiled_call  # later calls (other batch sizes, other variants) start eager
    compiled = first_s - out["seconds"]
    return {**out, "compile_s": compiled, "first_call_s": first_s}


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
    ap.add_argument("--variants", default="engine,unpacked,generate",
                    help="what runs at each batch size: engine (always), unpacked (the engine without packed "
                         "weights), generate (model.generate)")
    ap.add_argument("--compiled-generate", default="",
                    help="batch sizes at which model.generate with a static cache + torch.compile runs too")
    ap.add_argument("--precision", default="exact", choices=("exact", "fast", "int8", "bf16"),
                    help="also time the engine in this precision (default exact: no extra run)")
    ap.add_argument("--out", default="bench/out/generation.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = set(args.variants.split(",")) | {"engine"}
    if bad := variants - {"engine", "unpacked", "generate"}:
        ap.error(f"--variants: unknown {sorted(bad)[0]!r} (engine, unpacked, generate)")
    compiled_sizes = {int(s) for s in args.compiled_generate.split(",") if s}

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
           "prompt_tokens_mean": statistics.mean(len(p) for p in prompts), "variants": sorted(variants),
           "runs": {}}
    if res["loadavg_start"] > (os.cpu_count() or 1) and res["threads"] > 1:
        print(f"warning: load average {res['loadavg_start']:.1f} on {os.cpu_count()} cores: with "
              f"{res['threads']} threads, timings will be slow and noisy (try --threads 1)", file=sys.stderr)

    # Warm-up: first calls pay for allocator growth and kernel selection (and the fast mode's weight copies).
    t0 = time.perf_counter()
    engine.generate(prompts[:2], SamplingParams(max_new_tokens=4))
    warmup = {"exact": time.perf_counter() - t0}
    run_generate(model, prompts[:2], 4, pad_id, eos)
    fast = args.precision != "exact"
    if fast:
        probe = Engine(model, tok, precision=args.precision)
        t0 = time.perf_counter()
        probe.generate(prompts[:2], SamplingParams(max_new_tokens=4))
        warmup["fast"] = time.perf_counter() - t0  # includes quantising / converting every linear weight
        from transformer_squared.generation.precision import cpu_features

        res["precision"] = {"requested": args.precision, "compute_precision": probe.compute_precision,
                            "reason": probe.precision_reason, "warmup_s": warmup,
                            "cpu_features": sorted(f for f in cpu_features() if f.startswith(("avx", "amx", "fma")))}

    header = f"{'batch':>5} {'new':>4} | {'engine tok/s':>12} {'s/step':>7} | {'generate tok/s':>14} {'s/step':>7} | " \
             f"{'speedup':>7} {'match':>5}"
    print(header)
    print("-" * len(header))
    fmt = lambda v: f"{v:.3f}" if v is not None else "-"  # noqa: E731
    for B in sizes:
        n_new = args.new_tokens_64 if B >= 64 else args.new_tokens
        batch = prompts[:B]
        eng = Engine(model, tok, max_batch_size=B)
        makers = {"engine": lambda: run_engine(eng, batch, n_new),
                  "unpacked": lambda: run_engine(Engine(model, tok, max_batch_size=B, pack_weights=False), batch,
                                                 n_new),
                  "generate": lambda: run_generate(model, batch, n_new, pad_id, eos)}
        if fast:
            eng_fast = Engine(model, tok, max_batch_size=B, precision=args.precision)
            makers["fast"] = lambda: run_engine(eng_fast, batch, n_new)
        wanted = variants | ({"fast"} if fast else set())
        runs = [{k: f() for k, f in makers.items() if k in wanted} for _ in range(max(1, args.repeat))]
        e, u, g = (median_run([r[k] for r in runs]) if k in variants else None
                   for k in ("engine", "unpacked", "generate"))
        e_rows = e.pop("rows")
        g_rows = g.pop("rows") if g else None
        row = {"new_tokens": n_new, "engine": e, "engine_unpacked": u, "generate": g,
               "speedup": e["tokens_per_s"] / g["tokens_per_s"] if g else None,
               "speedup_unpacked": u["tokens_per_s"] / g["tokens_per_s"] if u and g else None,
               "greedy_match": sum(a == b for a, b in zip(e_rows, g_rows)) / B if g else None}
        if u:
            u_rows = u.pop("rows")
            u["greedy_match"] = sum(a == b for a, b in zip(u_rows, g_rows)) / B if g else None
        if fast:
            f = median_run([r["fast"] for r in runs])
            f_rows = f.pop("rows")
            row["engine_fast"] = {**f, "precision": args.precision, "compute_precision": eng_fast.compute_precision,
                                  "same_as_exact": sum(a == b for a, b in zip(f_rows, e_rows)) / B,
                                  "speedup_vs_engine": f["tokens_per_s"] / e["tokens_per_s"],
                                  "step_speedup_vs_engine": e["s_per_step"] / f["s_per_step"]
                                  if e["s_per_step"] and f["s_per_step"] else None,
                                  "speedup_vs_generate": f["tokens_per_s"] / g["tokens_per_s"] if g else None}
        if args.bf16:
            # A copy (the fp32 model stays as it is); it leaves the engine's packed weights behind (packed.py).
            m16 = copy.deepcopy(model).to(torch.bfloat16)
            b16 = run_engine(Engine(m16, tok, max_batch_size=B), batch, n_new)
            b16["same_as_fp32"] = sum(a == b for a, b in zip(b16.pop("rows"), e_rows)) / B
            row["engine_bf16"] = b16
            del m16
        if B in compiled_sizes:  # last: it leaves compiled kernels and a static cache behind
            c = run_compiled_generate(model, batch, n_new, pad_id, eos)
            if "rows" in c:
                c["greedy_match_engine"] = sum(a == b for a, b in zip(c.pop("rows"), e_rows)) / B
                c["engine_speedup"] = e["tokens_per_s"] / c["tokens_per_s"]
            row["generate_static_compiled"] = c
        res["runs"][str(B)] = row
        if g:
            print(f"{B:>5} {n_new:>4} | {e['tokens_per_s']:>12.1f} {fmt(e['s_per_step']):>7} | "
                  f"{g['tokens_per_s']:>14.1f} {fmt(g['s_per_step']):>7} | {row['speedup']:>6.2f}x "
                  f"{row['greedy_match']:>5.2f}", flush=True)
        else:
            print(f"{B:>5} {n_new:>4} | {e['tokens_per_s']:>12.1f} {fmt(e['s_per_step']):>7} | (generate not run)",
                  flush=True)
        if u:
            print(f"{'':>5} engine without packed weights: {u['tokens_per_s']:.1f} tok/s, s/step "
                  f"{fmt(u['s_per_step'])}, {fmt(row['speedup_unpacked'])}x, match {fmt(u['greedy_match'])}")
        if "generate_static_compiled" in row:
            c = row["generate_static_compiled"]
            if "error" in c:
                print(f"{'':>5} generate, static cache + torch.compile: failed: {c['error']}")
            else:
                print(f"{'':>5} generate, static cache + torch.compile: {c['tokens_per_s']:.1f} tok/s, s/step "
                      f"{fmt(c['s_per_step'])} (compiling took {c['compile_s']:.0f} s); engine "
                      f"{c['engine_speedup']:.2f}x it, same ids on {c['greedy_match_engine']:.2f} of the rows")
        if fast:
            f = row["engine_fast"]
            print(f"{'':>5} {args.precision} engine ({f['compute_precision']}): {f['tokens_per_s']:.1f} tok/s, s/step "
                  f"{fmt(f['s_per_step'])}, {f['speedup_vs_engine']:.2f}x the exact engine's tok/s "
                  f"({fmt(f['step_speedup_vs_engine'])}x per step), same ids as exact: {f['same_as_exact']:.2f}")
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
        if fast:
            eng_fast = Engine(model, tok, max_batch_size=len(batch), precision=args.precision)
            f = run_engine(eng_fast, batch, args.new_tokens, temperature=1.0)
            f.pop("rows")
            res["rollout"]["engine_fast"] = {**f, "precision": args.precision,
                                             "compute_precision": eng_fast.compute_precision,
                                             "speedup_vs_engine": f["tokens_per_s"] / e["tokens_per_s"]}
            print(f"rollout, {args.precision} engine ({eng_fast.compute_precision}): {f['tokens_per_s']:.1f} tok/s, "
                  f"{res['rollout']['engine_fast']['speedup_vs_engine']:.2f}x the exact engine", flush=True)
    save_results(res, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
