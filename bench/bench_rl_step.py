"""Seconds of one RL training step (SVF-RL by default), split into its parts, through the library's own loop pieces.

    python bench/bench_rl_step.py [--model smollm2-135m-instruct[,PATH.gguf ...]] [--dtype fp32[,bf16]]
                                  [--rollout-precision exact[,fast,int8,bf16]]
                                  [--task arc-easy] [--prompts 8] [--samples 4] [--new-tokens 64] [--steps 2]
                                  [--method svf] [--micro-batch-tokens 2048] [--threads N]
                                  [--out bench/out/rl_step.json]

One step is what `t2 train --objective rl` does per step (training/loop.py `_run`), called piece by piece:
`--prompts` P prompts × `--samples` G samples (temperature 1, leave-one-out baseline) × `--new-tokens` tokens.
Each step is timed in four parts, in the loop's order:

1. merge: entering `policy.generating()`, which writes W' = W + ΔW(z) for the z of the last update (SVF; the
   loop pays it inside the rollout, it is taken out here to show it). Nothing at step 1, where z = 1.
2. rollout: `next(rollouts(...))`, the loop's generator: the engine generates P·G rows (batches of the loop's
   `eval_batch_size`), the task scores them, advantages are computed. Split into generate (the engine's own
   prefill + decode seconds) and score (the rest: scoring, tokenizing, bookkeeping).
3. gradient: `loop.gradient_pass` (forward and backward in micro-batches; SVF maps ∂L/∂W' to ∂L/∂z at the end).
   Split into forward (the decoder's forward calls, timed by hooks on it: the transformer body without the LM
   head) and backward (the rest: the LM head and log-probs a chunk at a time, loss, backward, the z-gradient).
4. optimizer: `loop.optimizer_step` (gradient all-reduce (no-op here), clip, AdamW, scheduler).

Step 1 warms up allocators and kernels and runs at z = 1 (no merge); the reported step is the median of steps
2..N (default: one). Each (model, dtype) runs in its own spawned process, so one crash does not lose the others
and peak RSS is that run's alone. "Exact" is fp32, the library's default everywhere; `--dtype bf16` loads the
model in bfloat16 as `t2 train --dtype bf16` does (written for GPUs; SVF math stays fp32). `--rollout-precision`
times each (model, dtype) once per rollout precision, as `t2 train --rollout-precision` sets it: `exact` rolls out
on the fp32 engine; `fast` (t2 train's CPU default, through `auto`), `int8` or `bf16` on the engine's low-precision
copy of the weights (generation/precision.py, re-made after each update as the loop does), and the gradient pass
then weights each token by its truncated importance ratio (the fp32 log-prob over the rollout's). The issue's
target (#14 item 6): a step in <= 15 s for SmolLM2-135M on 2 cores.

The machine's floor for the same work (`machine_floor`, measured after the steps in the same process and
threads, fp32): rollout = the prompts' prefill at this CPU's GEMM throughput + each decoding step's matrix
products at its rows (bench_roofline.py's method), gradient = 2 x the forward FLOPs of the sequences' tokens at
the GEMM throughput (torch.mm on the model's shapes): the forward and the input gradient, all a frozen model
needs (no weight gradients; what SVF's z or LoRA's factors add on top is the method's cost, not the floor's).
Before 2026-12-06 it counted 3 x (as if every weight had its gradient): a floor 1.5x too high in its gradient part,
which the Qwen step came in under. `floor_s`, its parts and `step_over_floor` (step_s / floor)
are in the JSON; where the floor is above the target, no fp32 implementation can meet it on this machine.

Timings on a shared CPU are noisy: the CPU, thread count and load average are recorded with every figure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads collapse on a busy shared CPU

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench scripts' shared helpers
from cpuinfo import cpu_name  # noqa: E402

OUT = "bench/out/rl_step.json"
TARGET_STEP_SECONDS = 15.0  # issue #14 item 6: SmolLM2-135M, 2 cores
PRECISIONS = ("exact", "fast", "int8", "bf16")  # TrainConfig.rollout_precision's values, but auto (= fast on CPU)


def lose_first_when_out_of_memory() -> None:
    """Ask Linux's OOM killer to pick this process first: on a shared machine a benchmark is the one to lose."""
    try:
        Path("/proc/self/oom_score_adj").write_text("1000")
    except OSError:
        pass


def measure(spec: dict, queue) -> None:
    """Child process: time `spec["steps"]` RL steps of one (model, dtype); put a dict (or {"error"}) on `queue`."""
    lose_first_when_out_of_memory()
    try:
        queue.put(_measure(spec))
    except BaseException as e:  # noqa: BLE001 - reported in the JSON, the parent goes on with the next run
        queue.put({"model": spec["model"], "dtype": spec["dtype"], "rollout_precision": spec["rollout_precision"],
                   "error": f"{type(e).__name__}: {e}"[:500]})


def _measure(spec: dict) -> dict:
    import resource

    import torch

    from transformer_squared.generation import Engine, SamplingParams
    from transformer_squared.models import load_model, set_quiet_transformers
    from transformer_squared.tasks import get_task
    from transformer_squared.training.config import TrainConfig
    from transformer_squared.training.distributed import Dist
    from transformer_squared.training.loop import gradient_pass, lr_lambda, make_policy, optimizer_step
    from transformer_squared.training.rollout import DataOrder, rollouts

    set_quiet_transformers()
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    t = time.perf_counter()
    lm = load_model(spec["model"], dtype=torch.bfloat16 if spec["dtype"] == "bf16" else torch.float32)
    load_s = time.perf_counter() - t
    task = get_task(spec["task"])
    cfg = TrainConfig(out="-", model=spec["model"], task=spec["task"], method=spec["method"], objective="rl",
                      batch_size=spec["prompts"], samples_per_prompt=spec["samples"],
                      temperature=1.0 if spec["samples"] > 1 else 0.0, max_new_tokens=spec["new_tokens"],
                      dtype=spec["dtype"], eval_batch_size=spec["eval_batch_size"],
                      micro_batch_tokens=spec["micro_batch_tokens"],
                      rollout_precision=spec["rollout_precision"]).resolved(task.max_new_tokens)
    t = time.perf_counter()
    policy = make_policy(cfg, lm, progress=False)  # SVF: the decomposition, from the cache after a first run
    policy_s = time.perf_counter() - t
    d = Dist()
    train_set = task.load(cfg.train_split, spec["data_dir"])
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    # the rollouts' engine, in their precision (training/loop.py makes a second one for low-precision rollouts)
    engine = Engine(policy.generation_model, lm.tokenizer, max_batch_size=cfg.eval_batch_size,
                    precision=cfg.rollout_precision)
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                            stop=tuple(task.stop))
    batches = rollouts(policy, engine, lm.tokenizer, task, train_set, DataOrder(len(train_set), cfg.seed),
                       batch_size=cfg.batch_size, samples_per_prompt=cfg.samples_per_prompt, params=params,
                       wrong_reward=cfg.wrong_reward, seed=cfg.seed, start_step=0, d=d, baseline=cfg.baseline,
                       advantage_norm=cfg.advantage_norm)
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0

    forward = {"on": False, "s": 0.0, "t": 0.0, "calls": 0}

    def pre_hook(module, args):
        if forward["on"]:
            forward["t"] = time.perf_counter()

    def post_hook(module, args, out):
        if forward["on"]:
            forward["s"] += time.perf_counter() - forward["t"]
            forward["calls"] += 1

    # The decoder (the transformer body): training's log-probs call it directly and apply the LM head a chunk at
    # a time (training/sequences.py), so the head's products count in the rest of the gradient pass.
    try:
        body = policy.model.get_decoder() or policy.model
    except (AttributeError, NotImplementedError):
        body = policy.model
    hooks = [body.register_forward_pre_hook(pre_hook), body.register_forward_hook(post_hook)]
    steps = []
    try:
        for step in range(1, spec["steps"] + 1):
            load_start = os.getloadavg()[0]
            c0, t0 = time.process_time(), time.perf_counter()
            with policy.generating():  # W' for the last update's z (the rollout below then finds it fresh)
                pass
            t1 = time.perf_counter()
            batch = next(batches)
            t2 = time.perf_counter()
            generate_s = engine.stats.prefill_s + engine.stats.decode_s
            step_rows = list(engine.stats.step_rows)  # rows of each decoding step, for the rollout floor
            forward.update(on=True, s=0.0, calls=0)
            gradient_pass(policy, batch, cfg, float(cfg.batch_size * cfg.samples_per_prompt), pad_id,
                          torch.device("cpu"))
            forward["on"] = False
            t3 = time.perf_counter()
            grad_norm, _ = optimizer_step(policy, optimizer, scheduler, cfg, d)
            t4 = time.perf_counter()
            steps.append({
                "step": step, "step_s": t4 - t0, "step_cpu_s": time.process_time() - c0, "merge_s": t1 - t0,
                "rollout_s": t2 - t1,
                "rollout_generate_s": generate_s, "rollout_prefill_s": engine.stats.prefill_s,
                "rollout_decode_s": engine.stats.decode_s, "rollout_score_s": (t2 - t1) - generate_s,
                "gradient_s": t3 - t2, "gradient_forward_s": forward["s"],
                "gradient_backward_s": (t3 - t2) - forward["s"], "forward_calls": forward["calls"],
                "optimizer_s": t4 - t3, "rollouts": batch.size, "completion_tokens": batch.completion_tokens,
                "sequence_tokens": sum(len(p) + len(c) for p, c in zip(batch.prompts, batch.completions)),
                "prefill_tokens": sum(len(p) for p in {tuple(p) for p in batch.prompts}),  # repeats prefilled once
                "decode_step_rows": step_rows,
                "reward_mean": float(batch.rewards.mean()), "grad_norm": grad_norm,
                "loadavg_start": load_start, "loadavg_end": os.getloadavg()[0]})
            print(f"  {spec['model']} {spec['dtype']} rollouts {spec['rollout_precision']} step {step}: "
                  f"{_line(steps[-1])}", file=sys.stderr, flush=True)
        floor = machine_floor(policy.model, steps, max(spec["eval_batch_size"], max(
            (r for st in steps for r in st["decode_step_rows"]), default=1)))
    finally:
        for h in hooks:
            h.remove()
        policy.close()
    timed = steps[1:] or steps  # step 1 is the warm-up (and has no merge); with --steps 1 it is all there is
    keys = [k for k, v in steps[0].items() if k.endswith("_s")]
    return {"model": spec["model"], "dtype": spec["dtype"],
            "mode": "exact (fp32)" if spec["dtype"] == "fp32" else "bf16 (t2 train --dtype bf16)",
            "rollout_precision": spec["rollout_precision"], "rollout_engine": engine.precision_info,
            "method": cfg.method, "threads": torch.get_num_threads(),
            "engine_packed_weights": engine.pack_weights, "engine_path": type(engine.new_runner(256)).__name__,
            "load_s": load_s, "policy_s": policy_s, "trainable_parameters": sum(p.numel() for p in policy.parameters()),
            "steps_timed": [s["step"] for s in timed],
            **{k: statistics.median(s[k] for s in timed) for k in keys},
            **floor_figures(floor, timed),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "steps": steps}


def machine_floor(model, steps: list[dict], max_rows: int) -> dict:
    """What this CPU needs at least for the steps' work, measured here (same process, same threads), fp32:

    - decoding: the model's matrix products alone per step (bench_roofline.py's method: real weights in forward
      order, the fastest of MKL, oneDNN packed and oneDNN packed + fused), timed at 1, 2, 4, ... `max_rows` rows
      and interpolated for each step's rows;
    - GEMM throughput: torch.mm on the model's shapes (every distinct linear layer's and the LM head's) at 512
      rows (compute-bound), FLOP-weighted: it prices the prefill and the gradient pass.
    Each step's floor is then filled in by `step_floor`. Nothing else (attention, norms, sampling, Python, the
    SVF term, the optimizer) is counted. Timed on two clocks: wall (the same conditions as the step's seconds:
    on a shared machine both stretch together) and process CPU seconds / threads (the floor with the threads'
    cores to itself, steadier under load). It is the fp32 floor whatever the rollouts' precision: a low-precision
    rollout can go below its rollout part."""
    import torch
    from bench_roofline import kernels, layer_weights

    if next(model.parameters()).dtype != torch.float32:
        return {"error": "the floor is fp32's (this run's model is not fp32)"}
    if not hasattr(model, "model") or not hasattr(model.model, "layers"):
        return {"error": "the floor reads the Llama-family layout (model.model.layers)"}
    threads = torch.get_num_threads()
    head = model.lm_head.weight.detach()
    with torch.no_grad():
        sizes = sorted({1 << i for i in range(max_rows.bit_length()) if 1 << i <= max_rows} | {max_rows})
        products: dict[str, dict[int, float]] = {"wall": {}, "cpu": {}}
        for rows in sizes:
            runs = []
            for fused, kind in ((False, "mkl"), (False, "onednn"), (True, "onednn")):
                ws = [*(w for ws in layer_weights(model, fused) for w in ws), head]
                xs = {k: torch.randn(rows, k) for k in {w.shape[1] for w in ws}}
                pairs = [(xs[w.shape[1]], f) for w, f in zip(ws, kernels(ws, kind))]
                runs.append(_timed(lambda: [f(x) for x, f in pairs]))
            best = min(runs)  # by wall clock; its CPU seconds with it
            products["wall"][rows], products["cpu"][rows] = best[0], best[1] / threads
        weights = [w for ws in layer_weights(model, False) for w in ws]
        shapes: dict[tuple[int, int], int] = {}
        for w in [*weights, head]:
            shapes[tuple(w.shape)] = shapes.get(tuple(w.shape), 0) + 1
        m, flops, wall, cpu = 512, 0.0, 0.0, 0.0
        for (out_f, in_f), count in shapes.items():
            x, wt = torch.randn(m, in_f), torch.randn(in_f, out_f)
            t = _timed(lambda: torch.mm(x, wt))
            flops += count * 2 * m * in_f * out_f
            wall, cpu = wall + count * t[0], cpu + count * t[1] / threads
    return {"products_s_by_rows": products, "gemm_GFLOPs": {"wall": flops / wall / 1e9, "cpu": flops / cpu / 1e9},
            "layer_params": sum(w.numel() for w in weights), "head_params": head.numel()}


def _timed(fn, reps: int = 3) -> tuple[float, float]:
    """Median (wall, process CPU) seconds of `fn()` over `reps` runs after a warm-up run."""
    fn()
    runs = []
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        fn()
        runs.append((time.perf_counter() - t, time.process_time() - c))
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def step_floor(floor: dict, step: dict, clock: str = "wall") -> dict:
    """One step's floor in seconds on `clock`: rollout (prefill of the distinct prompts at the GEMM throughput +
    each decoding step's products at its rows) + gradient (2 x the forward FLOPs of the sequences' tokens, the LM
    head over the completion tokens only: the forward and the input gradient of frozen weights, at the GEMM
    throughput)."""
    rate = floor["gemm_GFLOPs"][clock] * 1e9
    by_rows = sorted(floor["products_s_by_rows"][clock].items())

    def products(rows: int) -> float:  # piecewise linear in the rows between the timed sizes
        for (r0, s0), (r1, s1) in zip(by_rows, by_rows[1:]):
            if rows <= r1:
                return s0 + (s1 - s0) * (rows - r0) / (r1 - r0)
        return by_rows[-1][1] * rows / by_rows[-1][0]

    prefill = 2 * floor["layer_params"] * step["prefill_tokens"] / rate
    decode = sum(products(r) for r in step["decode_step_rows"])
    forward_flops = 2 * (floor["layer_params"] * step["sequence_tokens"]
                         + floor["head_params"] * step["completion_tokens"])
    gradient = 2 * forward_flops / rate
    return {"floor_s": prefill + decode + gradient, "floor_rollout_s": prefill + decode,
            "floor_rollout_prefill_s": prefill, "floor_rollout_decode_s": decode, "floor_gradient_s": gradient}


def floor_figures(floor: dict, timed: list[dict]) -> dict:
    """The floor of the timed steps (medians, as the step's figures) and step_s / floor, or the reason there is
    none; `floor_cpu_s`: the same floor on the CPU clock (the threads' cores to itself)."""
    if "error" in floor:
        return {"floor_error": floor["error"]}
    per_step = [step_floor(floor, s) for s in timed]
    out = {k: statistics.median(f[k] for f in per_step) for k in per_step[0]}
    out["floor_cpu_s"] = statistics.median(step_floor(floor, s, "cpu")["floor_s"] for s in timed)
    out["step_over_floor"] = statistics.median(s["step_s"] / f["floor_s"] for s, f in zip(timed, per_step))
    out["floor_gemm_GFLOPs"] = floor["gemm_GFLOPs"]["wall"]
    out["floor_gemm_GFLOPs_cpu"] = floor["gemm_GFLOPs"]["cpu"]
    out["floor_products_s_by_rows"] = floor["products_s_by_rows"]
    return out


def _line(r: dict) -> str:
    return (f"step {r['step_s']:6.1f} s = merge {r['merge_s']:5.2f} + rollout {r['rollout_s']:6.1f} "
            f"(generate {r['rollout_generate_s']:.1f}) + gradient {r['gradient_s']:6.1f} "
            f"(forward {r['gradient_forward_s']:.1f}) + optimizer {r['optimizer_s']:.3f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct",
                   help="comma-separated models (alias, .gguf, HF directory), each timed in turn; e.g. add the path "
                        "printed by ../shared/tools/fetch-qwen2.5-coder-0.5b.sh for Qwen2.5-Coder-0.5B")
    p.add_argument("--dtype", default="fp32", help="comma-separated: fp32 (exact), bf16")
    p.add_argument("--rollout-precision", default="exact",
                   help=f"comma-separated, each timed in turn: {', '.join(PRECISIONS)} (t2 train's "
                        "--rollout-precision; its CPU default auto is fast)")
    p.add_argument("--task", default="arc-easy")
    p.add_argument("--data-dir", default=os.environ.get("T2_DATA_DIR") or
                   str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--method", default="svf", choices=("svf", "lora"))
    p.add_argument("--prompts", type=int, default=8, help="prompts per step (TrainConfig.batch_size)")
    p.add_argument("--samples", type=int, default=4, help="samples per prompt G (temperature 1 when G > 1)")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--eval-batch-size", type=int, default=16, help="rows the engine decodes together (the loop's "
                                                                   "eval_batch_size, default 16 as t2 train)")
    p.add_argument("--micro-batch-tokens", type=int, default=2048,
                   help="padded tokens per forward/backward (t2 train's default 2048; less memory, same gradient)")
    p.add_argument("--steps", type=int, default=2, help="steps per run; the first is a warm-up")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch threads (default: every core, the target's '2 cores')")
    p.add_argument("--out", default=OUT)
    a = p.parse_args(argv)
    for name in ("prompts", "samples", "new_tokens", "eval_batch_size", "micro_batch_tokens", "steps", "threads"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive integer")
    dtypes = a.dtype.split(",")
    if bad := [x for x in dtypes if x not in ("fp32", "bf16")]:
        p.error(f"--dtype: {bad[0]!r} is not fp32 or bf16")
    precisions = a.rollout_precision.split(",")
    if bad := [x for x in precisions if x not in PRECISIONS]:
        p.error(f"--rollout-precision: {bad[0]!r} is not one of {', '.join(PRECISIONS)}")

    import multiprocessing as mp
    import queue as queue_mod

    import torch

    ctx = mp.get_context("spawn")
    settings = {k: v for k, v in vars(a).items() if k not in ("out", "model", "dtype", "rollout_precision")}
    res = {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "settings": settings,
           "target_step_seconds": TARGET_STEP_SECONDS,
           "loadavg_start": os.getloadavg(), "runs": []}
    print(f"{res['cpu']}, {a.threads} threads, load average {res['loadavg_start'][0]:.1f}; {a.prompts} prompts x "
          f"{a.samples} samples x {a.new_tokens} new tokens ({a.task}, {a.method})", flush=True)
    for model in a.model.split(","):
        for dtype, precision in [(d, r) for d in dtypes for r in precisions]:
            q = ctx.Queue()
            proc = ctx.Process(target=measure, args=({**settings, "model": model, "dtype": dtype,
                                                             "rollout_precision": precision}, q))
            proc.start()
            row = None
            while row is None:  # a child killed (e.g. out of memory) puts nothing on the queue
                try:
                    row = q.get(timeout=5)
                except queue_mod.Empty:
                    if not proc.is_alive():
                        killed = " (SIGKILL: out of memory?)" if proc.exitcode == -9 else ""
                        row = {"model": model, "dtype": dtype, "rollout_precision": precision,
                               "error": f"the run's process died (exit code {proc.exitcode}{killed})"}
            proc.join()
            res["runs"].append(row)
            if "error" in row:
                print(f"{model} {dtype} rollouts {precision}: error: {row['error']}", flush=True)
            else:
                verdict = "meets" if row["step_s"] <= TARGET_STEP_SECONDS else "misses"
                print(f"{model} {dtype} rollouts {precision}: {_line(row)}; peak RSS {row['peak_rss_mb']:.0f} MB "
                      f"({verdict} the {TARGET_STEP_SECONDS:.0f} s target)", flush=True)
                if "floor_s" in row:
                    print(f"  machine floor {row['floor_s']:.1f} s = rollout {row['floor_rollout_s']:.1f} (prefill "
                          f"{row['floor_rollout_prefill_s']:.2f} + decode products {row['floor_rollout_decode_s']:.1f})"
                          f" + gradient {row['floor_gradient_s']:.1f} (2 x forward FLOPs at "
                          f"{row['floor_gemm_GFLOPs']:.0f} GFLOP/s); step / floor = {row['step_over_floor']:.2f}; "
                          f"target / floor = {TARGET_STEP_SECONDS / row['floor_s']:.2f}; on the CPU clock (the "
                          f"{row['threads']} threads' cores to itself: {row['floor_gemm_GFLOPs_cpu']:.0f} GFLOP/s) "
                          f"the floor is {row['floor_cpu_s']:.1f} s, target / floor = "
                          f"{TARGET_STEP_SECONDS / row['floor_cpu_s']:.2f}", flush=True)
                else:
                    print(f"  no machine floor: {row.get('floor_error')}", flush=True)
    res["loadavg_end"] = os.getloadavg()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from transformer_squared.fileio import atomic_write_json

    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(a.out, res)
    print(f"load average {res['loadavg_start'][0]:.1f} -> {res['loadavg_end'][0]:.1f}; wrote {a.out}")
    return 1 if any("error" in r for r in res["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
