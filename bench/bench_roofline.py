"""How fast could any engine be here? Lower bounds on decoding and prefill time, against `model.generate`.

An engine computes at least the model's matrix products. This script times those alone (no attention, norms,
sampling or Python between them) with the real weights streaming from memory, in the order a forward pass
reads them, using the fastest kernel this torch has for each case:
- fp32: MKL (`F.linear`, what `model.generate` runs), oneDNN with prepacked weights, and oneDNN with q|k|v and
  gate|up stacked (the engine's path); the floor is the fastest of the three;
- int8 (fbgemm dynamic quantisation, per-channel weights): for reference only, since its outputs differ from
  fp32 and so from `generate`.
Then, for each batch size, it runs `model.generate` on bench_generation.py's prompts (same prompts, same token
budget) and reports the best speed-up any fp32 engine could reach over it:
- per decoding step: generate's median s/step / the fp32 step floor;
- on tokens/s (the issue's metric, prefill included): generate's seconds / (prefill floor + steps x step floor),
  where the prefill floor is the layers' products over the prompts' real (unpadded) tokens.

    python bench/bench_roofline.py [--model default] [--batch-sizes 1,16] [--new-tokens 64] [--threads N]
                                   [--engine] [--no-generate] [--prefill-batch-sizes 16] [--cpu-clock]
                                   [--out bench/out/roofline.json]

With `--engine`, the library's engine decodes the same batch in the same process, and its median s/step (while
the batch is full) and prefill seconds are divided by the floors (`engine_step_over_floor`,
`engine_prefill_over_floor`: 1.0 would be an engine that does nothing but the products). `--no-generate` skips
`model.generate`; `--prefill-batch-sizes` limits the (slow, at batch 64) prefill floor to those batch sizes.

With `--cpu-clock` (and `--engine`), the floors and the engine are timed again on the process's CPU clock
(`time.process_time`, all threads' seconds), which other jobs on a shared machine disturb far less than the wall
clock: `runs[B]["cpu_clock"]` holds the floors, the engine's median s/step while the batch is full and its prefill
(a batch stepped here, prompts sorted by length as `Engine.generate` sorts them), and their ratios. With one
thread it is the time the work took; with more, the threads' sum, spin-waits included.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generation import bench_prompts, cpu_name, load, run_engine, run_generate, save_results  # noqa: E402


def timed(fn, reps: int = 5, clock=time.perf_counter) -> float:
    """Median seconds of `fn()` over `reps` runs after one warm-up run, on `clock`."""
    fn()
    times = []
    for _ in range(reps):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return statistics.median(times)


def layer_weights(model, fused: bool) -> list[list[torch.Tensor]]:
    """Per decoder layer, the weights of its products in forward order; with `fused`, q|k|v and gate|up stacked."""
    out = []
    for layer in model.model.layers:
        a, m = layer.self_attn, layer.mlp
        w = lambda mod: mod.weight.detach()  # noqa: E731
        if fused:
            out.append([torch.cat([w(a.q_proj), w(a.k_proj), w(a.v_proj)]), w(a.o_proj),
                        torch.cat([w(m.gate_proj), w(m.up_proj)]), w(m.down_proj)])
        else:
            out.append([w(a.q_proj), w(a.k_proj), w(a.v_proj), w(a.o_proj), w(m.gate_proj), w(m.up_proj),
                        w(m.down_proj)])
    return out


def kernels(weights: list[torch.Tensor], kind: str):
    """One callable per weight computing x @ Wᵀ with the given kernel (weights prepared once, here)."""
    if kind == "mkl":
        return [lambda x, w=w: F.linear(x, w) for w in weights]
    if kind == "onednn":
        packed = [torch.ops.mkldnn._reorder_linear_weight(w, 16) for w in weights]
        return [lambda x, p=p: torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], "") for p in packed]
    if kind == "int8":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # quantised tensors are deprecated, still the fastest int8 path here
            prepacked = []
            for w in weights:
                scale = (w.abs().amax(1).clamp_min(1e-12) / 127).double()
                q = torch.quantize_per_channel(w, scale, torch.zeros(w.shape[0], dtype=torch.long), 0, torch.qint8)
                prepacked.append(torch.ops.quantized.linear_prepack(q, None))
        return [lambda x, p=p: torch.ops.quantized.linear_dynamic(x, p, True) for p in prepacked]
    raise ValueError(kind)


def products_seconds(model, rows: int, kind: str, fused: bool, head: bool, reps: int,
                     clock=time.perf_counter) -> float:
    """Seconds for one forward's products at `rows` rows (the LM head too with `head`), on `clock`."""
    weights = [w for ws in layer_weights(model, fused) for w in ws]
    if head:
        weights.append(model.lm_head.weight.detach())
    fns = kernels(weights, kind)
    xs = {k: torch.randn(rows, k) for k in {w.shape[1] for w in weights}}
    pairs = [(xs[w.shape[1]], f) for w, f in zip(weights, fns)]
    return timed(lambda: [f(x) for x, f in pairs], reps, clock)


def engine_cpu_seconds(engine, prompts: list[list[int]], new_tokens: int) -> dict:
    """The engine on `prompts` (greedy), stepped here on the CPU clock: prefill (the first step) and the median
    decoding step while every row is running, in CPU seconds."""
    from transformer_squared.generation import SamplingParams

    steps = []
    with engine.batch(capacity=len(prompts)) as batch:
        for p in sorted(prompts, key=lambda p: (len(p), p)):  # as Engine.generate orders a chunk
            batch.add(p, SamplingParams(max_new_tokens=new_tokens))
        t0 = time.process_time()
        batch.step()
        prefill = time.process_time() - t0
        while batch:
            full = len(batch) == len(prompts)
            t0 = time.process_time()
            batch.step()
            if full:
                steps.append(time.process_time() - t0)
    return {"prefill_s": prefill, "s_per_step": statistics.median(steps) if steps else None, "steps": len(steps)}


def memory_read_gbs() -> float:
    a = torch.ones(64 * 1024 * 1024)  # 256 MB, far beyond the caches
    return a.numel() * 4 / timed(lambda: a.sum(), 5) / 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--batch-sizes", default="1,16")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--engine", action="store_true", help="also time the engine on the same batch (vs the floors)")
    ap.add_argument("--no-generate", action="store_true", help="skip model.generate (floors and engine only)")
    ap.add_argument("--prefill-batch-sizes", default=None,
                    help="batch sizes whose prefill floor is measured (default: all of --batch-sizes)")
    ap.add_argument("--cpu-clock", action="store_true",
                    help="with --engine: floors and engine again on the process's CPU clock (steadier under load)")
    ap.add_argument("--out", default="bench/out/roofline.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformer_squared.generation import Engine, SamplingParams, chat_prompt_ids

    model, tok, name = load(args.model)
    if not hasattr(model, "model") or not hasattr(model.model, "layers"):
        print("error: this script reads the Llama-family layout (model.model.layers)", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    prefill_sizes = set(sizes) if args.prefill_batch_sizes is None else \
        {int(s) for s in args.prefill_batch_sizes.split(",") if s}
    prompts = [chat_prompt_ids(tok, c) for c in bench_prompts(max(sizes))]
    engine = Engine(model, tok)  # only for its EOS and pad ids
    params = sum(w.numel() for ws in layer_weights(model, False) for w in ws) + model.lm_head.weight.numel()
    res = {"model": name, "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu_name(),
           "cpu_count": os.cpu_count(), "loadavg_start": os.getloadavg()[0], "product_weights": params,
           "memory_read_GBps": memory_read_gbs(), "new_tokens": args.new_tokens, "runs": {}}
    print(f"{name}: {params / 1e6:.1f}M weights in products; memory read {res['memory_read_GBps']:.1f} GB/s; "
          f"{res['threads']} threads, {res['cpu']}")
    with torch.inference_mode():
        if not args.no_generate:
            run_generate(model, prompts[:2], 4, engine.pad_id, engine.eos)  # warm-up
        if args.engine:
            engine.generate(prompts[:2], SamplingParams(max_new_tokens=4))  # warm-up
        for B in sizes:
            batch = prompts[:B]
            step = {kind + ("_fused" if fused else ""): products_seconds(model, B, kind, fused, True, args.reps)
                    for kind, fused in (("mkl", False), ("onednn", False), ("onednn", True), ("int8", True))}
            fp32_floor = min(v for k, v in step.items() if not k.startswith("int8"))
            real_tokens = sum(len(p) for p in batch)
            prefill = None
            if B in prefill_sizes:
                prefill = min(products_seconds(model, real_tokens, kind, fused, False, max(1, args.reps // 2))
                              for kind, fused in (("mkl", False), ("onednn", False), ("onednn", True)))
            row = {"step_products_s": step, "step_floor_fp32_s": fp32_floor,
                   "step_floor_GFLOPs": 2 * params * B / fp32_floor / 1e9,
                   "prefill_tokens": real_tokens, "prefill_floor_fp32_s": prefill}
            print(f"batch {B}: step products (s) " + ", ".join(f"{k} {v:.4f}" for k, v in step.items()))
            print(f"  fp32 floor {fp32_floor:.4f} s/step ({row['step_floor_GFLOPs']:.0f} GFLOP/s); prefill floor "
                  + (f"{prefill:.2f} s for {real_tokens} tokens" if prefill is not None else "not measured"))
            if args.engine:
                e = run_engine(Engine(model, tok, max_batch_size=B), batch, args.new_tokens)
                e.pop("rows")
                row["engine"] = e
                row["engine_step_over_floor"] = e["s_per_step"] / fp32_floor if e["s_per_step"] else None
                row["engine_prefill_over_floor"] = e["prefill_s"] / prefill if prefill else None
                print(f"  engine {e['s_per_step']:.4f} s/step = {row['engine_step_over_floor']:.2f}x the floor; "
                      f"prefill {e['prefill_s']:.2f} s" + (f" = {row['engine_prefill_over_floor']:.2f}x the floor"
                                                           if prefill else ""), flush=True)
            if args.engine and args.cpu_clock:
                cpu = lambda rows, head, reps: min(  # noqa: E731
                    products_seconds(model, rows, kind, fused, head, reps, time.process_time)
                    for kind, fused in (("mkl", False), ("onednn", False), ("onednn", True)))
                c = {"step_floor_fp32_s": cpu(B, True, args.reps),
                     "prefill_floor_fp32_s": cpu(real_tokens, False, max(1, args.reps // 2))
                     if B in prefill_sizes else None,
                     **{f"engine_{k}": v for k, v in
                        engine_cpu_seconds(Engine(model, tok, max_batch_size=B), batch, args.new_tokens).items()}}
                c["engine_step_over_floor"] = c["engine_s_per_step"] / c["step_floor_fp32_s"] \
                    if c["engine_s_per_step"] else None
                c["engine_prefill_over_floor"] = c["engine_prefill_s"] / c["prefill_floor_fp32_s"] \
                    if c["prefill_floor_fp32_s"] else None
                row["cpu_clock"] = c
                print(f"  CPU clock: floor {c['step_floor_fp32_s']:.4f} s/step, engine {c['engine_s_per_step']:.4f} "
                      f"= {c['engine_step_over_floor']:.2f}x" + (
                          f"; prefill floor {c['prefill_floor_fp32_s']:.2f} s, engine {c['engine_prefill_s']:.2f} s = "
                          f"{c['engine_prefill_over_floor']:.2f}x" if c["prefill_floor_fp32_s"] else ""), flush=True)
            if not args.no_generate:
                g = run_generate(model, batch, args.new_tokens, engine.pad_id, engine.eos)
                g.pop("rows")
                steps = args.new_tokens - 1  # decoding steps after the prefill's first token
                row["generate"] = g
                row["max_step_speedup_fp32"] = g["s_per_step"] / fp32_floor
                row["max_step_speedup_int8"] = g["s_per_step"] / step["int8_fused"]
                if prefill is not None:
                    row["max_tokens_per_s_speedup_fp32"] = g["seconds"] / (prefill + steps * fp32_floor)
                print(f"  generate {g['s_per_step']:.4f} s/step, {g['seconds']:.1f} s in all (prefill "
                      f"{g['prefill_s']:.1f} s); best possible fp32 engine vs generate: "
                      f"{row['max_step_speedup_fp32']:.2f}x per step"
                      + (f", {row['max_tokens_per_s_speedup_fp32']:.2f}x tokens/s" if prefill is not None else "")
                      + f" (int8 products: {row['max_step_speedup_int8']:.2f}x per step)", flush=True)
            res["runs"][str(B)] = row
    save_results(res, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
