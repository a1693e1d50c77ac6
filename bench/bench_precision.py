"""The fast mode's candidate kernels vs fp32: one decoding step's matrix products for a model's shapes.

Per batch size, the products of one step (every layer's q|k|v, o, gate|up and down, then the LM head) with
random weights of the model's shapes, each kernel timed on the same inputs, in turn, median of `--reps`:

- fp32_mkl: `F.linear` (MKL sgemm, what `model.generate` runs);
- fp32_onednn: oneDNN with the weight packed once (the exact engine's kernel, generation/packed.py);
- int8_fbgemm: fbgemm's dynamic quantised linear, per-channel int8 weights (the fast mode's int8 kernel,
  generation/precision.py, with its per-row rescale);
- int8_weight_only: `aten._weight_int8pack_mm` (int8 weights, bf16 activations);
- fp16_fbgemm: fbgemm's fp16-weight linear (`linear_dynamic_fp16`);
- bf16: the fast mode's bf16 kernel (oneDNN-packed where the CPU has native bf16, else `F.linear` in bf16).

    python bench/bench_precision.py [--shapes smollm2-135m|qwen2.5-0.5b] [--batch-sizes 1,16,64] [--threads 1]
                                    [--kernels ...] [--out bench/out/precision_<shapes>.json]

The weights are random, so this measures speed only. `--fidelity MODEL` measures instead what each precision
does to that model's next-token distributions: the 16 bench prompts (bench_generation.py) in one padded batch
through the HF forward, every linear layer in the precision, against fp32: mean KL(fp32 || precision) and the
share of positions whose argmax agrees, over all real prompt positions. Rows: the fast mode's int8 and bf16
kernels, and torch's default dynamic quantisation (one activation scale per product, 7-bit activations) for
reference. What the fast mode does to answers is measured by `t2 eval` + `t2 compare` (results/fast_mode).
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
from cpuinfo import cpu_name  # noqa: E402

# (hidden, intermediate, query heads x head dim, kv heads x head dim, layers, vocab): from the models' configs
SHAPES = {"smollm2-135m": (576, 1536, 576, 192, 30, 49152), "qwen2.5-0.5b": (896, 4864, 896, 128, 24, 151936)}
KERNELS = ("fp32_mkl", "fp32_onednn", "int8_fbgemm", "int8_weight_only", "fp16_fbgemm", "bf16")


def products(name: str) -> tuple[list[tuple[int, int]], int, tuple[int, int]]:
    """(in, out) of one layer's products (q|k|v and gate|up fused, as the engine runs them), layers, LM head."""
    C, I, Q, KV, L, V = SHAPES[name]
    return [(C, Q + 2 * KV), (Q, C), (C, 2 * I), (I, C)], L, (C, V)


def prepared(kind: str, w: torch.Tensor):
    """A callable x -> x @ wᵀ with `w` prepared once for `kind`."""
    from transformer_squared.generation import precision as lowp

    if kind == "fp32_mkl":
        return lambda x: F.linear(x, w)
    if kind == "fp32_onednn":
        p = torch.ops.mkldnn._reorder_linear_weight(w, 16)
        return lambda x: torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], "")
    if kind in ("int8_fbgemm", "bf16"):
        p = lowp.prepare(kind.split("_")[0], w, None)
        return lambda x: lowp.run(p, x)
    if kind == "int8_weight_only":
        scale = w.abs().amax(1) / 127
        q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
        s = scale.bfloat16()
        return lambda x: torch.ops.aten._weight_int8pack_mm(x.bfloat16(), q, s).float()
    if kind == "fp16_fbgemm":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = torch.ops.quantized.linear_prepack_fp16(w, None)
        return lambda x: torch.ops.quantized.linear_dynamic_fp16(x, p)
    raise ValueError(kind)


@torch.no_grad()
def fidelity(spec: str, out: str | None) -> int:
    """KL and argmax agreement of each precision's next-token distributions with fp32's (see the module doc)."""
    import functools

    from bench_generation import bench_prompts, load

    from transformer_squared.generation import Engine, chat_prompt_ids
    from transformer_squared.generation import precision as lowp
    from transformer_squared.generation.packed import _packed_forward, unpack

    model, tok, name = load(spec)
    engine = Engine(model, tok)
    ids, mask = engine.left_pad([chat_prompt_ids(tok, c) for c in bench_prompts(16)])
    real = mask.bool()
    ref = model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)[real]  # (N, V)
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]

    def torch_default(m, x):  # torch.ao dynamic quantisation: 8-bit weights, one 7-bit activation scale
        if "_bench_q" not in m.__dict__:
            w = m.weight.detach()
            scale = (w.abs().amax(1) / 127).clamp_min(1e-12).double()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                q = torch.quantize_per_channel(w, scale, torch.zeros(w.shape[0], dtype=torch.long), 0, torch.qint8)
                m.__dict__["_bench_q"] = torch.ops.quantized.linear_prepack(q, m.bias)
        return torch.ops.quantized.linear_dynamic(x.reshape(-1, x.shape[-1]), m.__dict__["_bench_q"],
                                                  True).reshape(*x.shape[:-1], -1)

    res = {"model": name, "positions": int(real.sum()), "loadavg": os.getloadavg()[0], "rows": {}}
    for row, forward in (("int8 (fast mode)", lambda m: functools.partial(_packed_forward, m, precision="int8")),
                         ("bf16 (fast mode)", lambda m: functools.partial(_packed_forward, m, precision="bf16")),
                         ("int8, torch's default dynamic quantisation", lambda m: functools.partial(torch_default, m))):
        if "int8" in row and lowp.int8_problem(torch.device("cpu")):
            continue
        for m in linears:
            m.forward = forward(m)
        try:
            got = model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)[real]
        finally:
            for m in linears:
                m.__dict__.pop("forward", None)
                m.__dict__.pop("_bench_q", None)
            unpack(model)
        kl = float((ref.exp() * (ref - got)).sum(-1).mean())
        top1 = float((ref.argmax(-1) == got.argmax(-1)).float().mean())
        res["rows"][row] = {"kl": kl, "top1_agreement": top1}
        print(f"{row:45s} KL {kl:.4f}  argmax agreement {top1:.3f}", flush=True)
    from transformer_squared.fileio import atomic_write_json

    out = out or "bench/out/precision_fidelity.json"
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, res)
    print(f"{res['positions']} positions; wrote {out}", file=sys.stderr)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="smollm2-135m", choices=sorted(SHAPES))
    ap.add_argument("--batch-sizes", default="1,16,64")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--kernels", default=",".join(KERNELS))
    ap.add_argument("--fidelity", default=None, metavar="MODEL",
                    help="instead: each precision's next-token distributions on MODEL vs fp32 (module doc)")
    ap.add_argument("--out", default=None, help="default: bench/out/precision_<shapes>.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.fidelity:
        return fidelity(args.fidelity, args.out)
    kinds = args.kernels.split(",")
    if bad := set(kinds) - set(KERNELS):
        ap.error(f"--kernels: unknown {sorted(bad)[0]!r} ({', '.join(KERNELS)})")
    layer, L, head = products(args.shapes)
    torch.manual_seed(0)
    weights = [torch.randn(m, n) / n**0.5 for n, m in layer]
    head_w = torch.randn(head[1], head[0]) / head[0] ** 0.5
    res = {"shapes": args.shapes, "torch": torch.__version__, "cpu": cpu_name(), "threads": torch.get_num_threads(),
           "loadavg_start": os.getloadavg()[0], "reps": args.reps, "runs": {}}
    print(f"{args.shapes}: one decoding step's products, ms (LM head's share in brackets); {res['cpu']}, "
          f"{res['threads']} thread(s)")
    fns = {k: ([prepared(k, w) for w in weights], prepared(k, head_w)) for k in kinds}
    for B in [int(s) for s in args.batch_sizes.split(",")]:
        xs, xh = [torch.randn(B, n) for n, _ in layer], torch.randn(B, head[0])

        def step(kind: str) -> tuple[float, float]:
            mats, hd = fns[kind]
            t0 = time.perf_counter()
            for _ in range(L):
                for f, x in zip(mats, xs):
                    f(x)
            t1 = time.perf_counter()
            hd(xh)
            t2 = time.perf_counter()
            return t2 - t0, t2 - t1

        times = {k: [] for k in kinds}
        for k in kinds:
            step(k)  # warm-up
        for _ in range(args.reps):
            for k in kinds:  # in turn: load swings spread over all kernels
                times[k].append(step(k))
        row = {k: {"step_s": statistics.median(t[0] for t in v), "head_s": statistics.median(t[1] for t in v)}
               for k, v in times.items()}
        exact = min(row[k]["step_s"] for k in ("fp32_mkl", "fp32_onednn") if k in row) if \
            {"fp32_mkl", "fp32_onednn"} & set(row) else None
        for v in row.values():
            v["speedup_vs_fp32"] = exact / v["step_s"] if exact else None
        row["loadavg"] = os.getloadavg()[0]
        res["runs"][str(B)] = row
        cells = "  ".join(f"{k} {1e3 * row[k]['step_s']:.1f} ({1e3 * row[k]['head_s']:.1f})" for k in kinds)
        print(f"batch {B:>3}: {cells}  [load {row['loadavg']:.1f}]", flush=True)
    res["loadavg_end"] = os.getloadavg()[0]
    out = args.out or f"bench/out/precision_{args.shapes}.json"
    from transformer_squared.fileio import atomic_write_json

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, res)
    print(f"load average {res['loadavg_start']:.1f} -> {res['loadavg_end']:.1f}; wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
