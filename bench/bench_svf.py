"""Benchmark the SVF foundation on the embedded default (or --model): load, SVD, merge, per-row vs merged.

Measures, in one process:
- first load (GGUF dequantize + convert, into a fresh temporary cache) and cached load time;
- SVD time of the target matrices (fresh, no cache) and the cached-factor load time;
- time to apply an expert (merge W' for every target) and to restore, vs one forward pass over 512 tokens;
- per-row mode (each of 16 sequences its own expert, factored) vs merged dense weights: tokens/s of a forward
  pass over batch 16 (prefill, 128 tokens each) and of single-token decoding steps with a KV cache.

    python bench/bench_svf.py [--model smollm2-135m-instruct] [--out bench/out/svf.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch


def timed(fn, repeat: int = 1):
    """(best seconds, last result) over `repeat` runs."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--targets", default="mlp")
    ap.add_argument("--out", default="bench/out/svf.json")
    ap.add_argument("--skip-first-load", action="store_true", help="skip the ~20 s GGUF conversion timing")
    args = ap.parse_args()

    from transformer_squared.models import load_model, set_quiet_transformers
    from transformer_squared.svd import decompose, fingerprint
    from transformer_squared.svf import SVF
    from transformer_squared.targets import resolve_targets

    set_quiet_transformers()
    res: dict = {"model": args.model, "targets": args.targets, "torch": torch.__version__,
                 "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
                 "loadavg_start": os.getloadavg()[0]}

    if not args.skip_first_load:
        with tempfile.TemporaryDirectory() as tmp:
            old = os.environ.get("T2_CACHE")
            os.environ["T2_CACHE"] = tmp
            res["load_first_s"], _ = timed(lambda: load_model(args.model))
            if old is None:
                del os.environ["T2_CACHE"]
            else:
                os.environ["T2_CACHE"] = old
    load_model(args.model)  # make sure the real cache is warm
    res["load_cached_s"], lm = timed(lambda: load_model(args.model), repeat=2)
    model = lm.model

    names = resolve_targets(model, args.targets)
    res["matrices"] = len(names)
    res["fingerprint_s"], digests = timed(lambda: fingerprint(model, names))
    res["svd_s"], factors = timed(lambda: decompose(model, names, cache=False, progress=False, digests=digests))
    decompose(model, names, progress=False, digests=digests)  # populate the cache
    res["svd_cached_load_s"], _ = timed(lambda: decompose(model, names, progress=False, digests=digests), repeat=2)

    svf = SVF.attach(model, factors)
    gen = torch.Generator().manual_seed(0)
    experts = [{n: 1 + 0.1 * torch.randn(m.rank, generator=gen) for n, m in svf.layers.items()} for _ in range(16)]
    merges, restores = [], []
    for i in range(3):  # each restore must undo a merge, so time them in pairs
        merges.append(timed(lambda: svf.merge(experts[i]))[0])
        restores.append(timed(svf.restore)[0])
    res["merge_s"], res["restore_s"] = min(merges), min(restores)

    ids512 = torch.randint(100, 40000, (1, 512), generator=gen)
    with torch.inference_mode():
        res["forward_512_tokens_s"], _ = timed(lambda: model(input_ids=ids512), repeat=3)
    res["merge_over_forward512"] = res["merge_s"] / res["forward_512_tokens_s"]

    B, T, steps = 16, 128, 16
    ids = torch.randint(100, 40000, (B, T), generator=gen)
    step_ids = torch.randint(100, 40000, (B, 1), generator=gen)

    def prefill_and_decode():
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = model(input_ids=ids, use_cache=True)
            t1 = time.perf_counter()
            cache = out.past_key_values
            for _ in range(steps):
                cache = model(input_ids=step_ids, past_key_values=cache, use_cache=True).past_key_values
            t2 = time.perf_counter()
        return {"prefill_tokens_per_s": B * T / (t1 - t0), "decode_tokens_per_s": B * steps / (t2 - t1)}

    modes = {}
    svf.merge(experts[0])
    prefill_and_decode()  # warm-up
    modes["merged"] = max((prefill_and_decode() for _ in range(2)), key=lambda r: r["decode_tokens_per_s"])
    svf.set_rows(experts)
    modes["per_row"] = max((prefill_and_decode() for _ in range(2)), key=lambda r: r["decode_tokens_per_s"])
    svf.restore()
    modes["base"] = max((prefill_and_decode() for _ in range(2)), key=lambda r: r["decode_tokens_per_s"])
    res["batch16"] = modes
    res["per_row_over_merged_decode"] = modes["per_row"]["decode_tokens_per_s"] / modes["merged"]["decode_tokens_per_s"]
    res["per_row_over_merged_prefill"] = modes["per_row"]["prefill_tokens_per_s"] / modes["merged"]["prefill_tokens_per_s"]
    res["loadavg_end"] = os.getloadavg()[0]

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    from transformer_squared.fileio import atomic_write_json

    atomic_write_json(args.out, res)
    width = max(len(k) for k in res)
    for k, v in res.items():
        print(f"{k:<{width}}  {json.dumps(v) if isinstance(v, dict) else (f'{v:.4g}' if isinstance(v, float) else v)}")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
