"""Load test of `t2 serve`: N concurrent requests against the same N sent one at a time, on 127.0.0.1.

Starts `t2 serve` itself (a subprocess, so the load generator does not share the server's GIL) on a free
loopback port with the embedded model (or --model) and an expert set (--experts, else random experts made
into a temporary directory: trained experts do not change the cost), then:

1. concurrent round: all N requests at once (asyncio + the official openai client); the models cycle through
   --models, so batches mix experts (per-row SVF);
2. sequential round: the same requests, one at a time (each alone in its batch: merged weights).

Reports failures, latency p50/p99, requests/s and generated tokens/s of both rounds, the speed-up, the
concurrent p50 over the sequential one (a lone request's latency), how many greedy answers differ between the
rounds (per-row vs merged arithmetic), and the server's statistics (the server batches continuously: requests
join the running batch between decoding steps, so "joins" counts the groups of requests that joined together).

3. the machine's limit (`engine_limits`, after the server has stopped): the engine alone, in this process, times a
   lone request (batch 1, merged weights: prefill and decoding step) and the N requests together (batch N, the
   concurrent round's expert mix as per-row z, and on one merged set of weights for comparison: the prefill of
   the N prompts as one join and the decoding step). A server with zero overhead would reach
   throughput_limit = N·(prefill1 + (k-1)·t1) / (prefillN + (k-1)·tN) and p50_limit = the inverse, for k
   tokens a request (with --max-batch-size B < N: waves of B). `throughput_overhead` = limit / measured and
   `p50_overhead` = measured / limit say how far the server is from them (1.0: none).

The issue's targets (#14 item 2) are printed next to the figures and the limits: throughput >= 4x sequential,
p50 <= 3x a lone request's, no failures. Where a limit is on the wrong side of its target, no server can meet
the target on this machine. Everything is bounded: one round each, a timeout per request and per round; the
server is stopped at the end.

    OMP_NUM_THREADS=1 python bench/bench_serving.py [--requests 64] [--max-tokens 16] [--max-batch-size N]
                                                    [--no-limit] [--out bench/out/serving.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench scripts' shared helpers
from cpuinfo import cpu_name  # noqa: E402

TARGET_THROUGHPUT, TARGET_P50 = 4.0, 3.0  # issue #14 item 2: >= 4x sequential, p50 <= 3x a lone request's
QUESTIONS = [
    "What is {a} plus {b}?", "Write a Python function that returns the {a}th Fibonacci number.",
    "Which is heavier, {a} kg of feathers or {b} kg of iron?", "Name {a} animals that live in the sea.",
    "If a train travels {a} km in {b} hours, what is its speed?", "Explain recursion in one sentence.",
    "Is {a} a prime number?", "Give me a synonym for 'quick'.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_experts(model: str, root: Path, names: list[str]) -> None:
    from transformer_squared.adapted import AdaptedModel
    from transformer_squared.experts import Expert

    am = AdaptedModel.prepare(model, progress=False)
    for i, name in enumerate(names):
        Expert.random(am.shapes(), 0.1, seed=i + 1, meta=am.expert_meta(name=name, domain=name)).save(root / name)


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"t2 serve exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if json.load(r)["status"] == "ok":
                    return
        except OSError:
            time.sleep(0.25)
    raise SystemExit(f"t2 serve not healthy after {timeout:.0f} s")


def health(url: str) -> dict:
    with urllib.request.urlopen(url + "/health", timeout=10) as r:
        return json.load(r)


def engine_limits(model: str, experts: str, reqs: list[dict], max_tokens: int, batch: int, threads: int,
                  lone: int = 8) -> dict:
    """The machine's limit for this workload, from the engine alone in this process (no HTTP, no scheduler):

    - t1, prefill1: a lone request as the sequential round runs it (batch 1, its expert's merged weights): the
      median decoding step and the mean prefill over `lone` of the requests;
    - tB (rows), prefillB: B = `batch` requests together with the concurrent round's expert mix (per-row z), the
      median step while all B rows run and the prefill of the B prompts as one join; tB (merged): the same rows
      on one set of merged weights (the base), for what the per-row term costs.

    Every row generates `max_tokens` tokens here (EOS ignored), so a row's work is prefill + (k-1) steps. An ideal
    continuous-batching server (zero overhead, first come first served, batches of B) serves a lone request in
    lone = prefill1 + (k-1)·t1, and N requests in W = ceil(N/B) waves of wave = prefillB + (k-1)·tB:
    throughput_limit = N·lone / (W·wave), p50_limit = ceil((N//2 + 1)/B)·wave / lone (for B = N: N·t1/tN per
    generated token, plus prefill, and (prefillN + k·tN)/(prefill1 + k·t1)). Both clocks are kept: "cpu" (this
    process's CPU seconds: steady on a shared machine, what the limits use) and "wall"."""
    import math

    import torch

    from transformer_squared.adaptation.model import SelfAdaptiveModel
    from transformer_squared.generation import SamplingParams, chat_prompt_ids
    from transformer_squared.generation.batch import RunningBatch

    torch.set_num_threads(threads)
    sam = SelfAdaptiveModel.from_dir(experts, model=model, batch_size=batch)
    rt = sam.rt
    by_name = {rt.experts.names[d]: rt.experts.experts[d] for d in rt.experts.domains}
    prompts = [chat_prompt_ids(rt.tokenizer, r["messages"]) for r in reqs]
    states = [by_name.get(r["model"]) for r in reqs]  # base (and auto: pass 1 not timed here) -> None
    params = SamplingParams(max_new_tokens=max_tokens)
    engine, svf = rt.engine, rt.am.svf
    clocks = {"wall": time.perf_counter, "cpu": time.process_time}

    def run(rows: list[int], per_row: bool) -> dict[str, tuple[float, list[float]]]:
        """Per clock: the prefill's seconds (the first step: every row joins there) and each decoding step's."""
        on_rows = (lambda ex: svf.set_rows([None if e is None else e.z for e in ex])) if per_row else \
            (lambda ex: None)  # callbacks given either way: prefill as the server's (no shared prompts)
        times: dict[str, list[float]] = {c: [] for c in clocks}
        with RunningBatch(engine, capacity=len(rows), on_rows=on_rows,
                          on_reindex=svf.select_rows if per_row else (lambda keep: None)) as b:
            for i in rows:
                b.add(prompts[i], params, state=states[i])
            while b:
                t = {c: f() for c, f in clocks.items()}
                b.step()
                for c, f in clocks.items():
                    times[c].append(f() - t[c])
        return {c: (v[0], v[1:]) for c, v in times.items()}

    eos, engine.eos = engine.eos, set()  # every row runs all its steps: the batch stays full
    try:
        with torch.inference_mode():
            run([0], per_row=False)  # warm-ups: first-call allocations, the per-row factors' packed copies
            run(list(range(min(3, len(reqs)))), per_row=True)
            svf.restore()
            singles = []
            for i in range(min(lone, len(reqs))):
                rt.cache.activate(states[i])  # the sequential round: alone in its batch, merged weights
                singles.append(run([i], per_row=False))
            rt.cache.activate(None)
            rows = list(range(min(batch, len(reqs))))
            mixed = run(rows, per_row=True)
            svf.restore()
            merged = run(rows, per_row=False)
    finally:
        engine.eos = eos
        svf.restore()
    k, B, N = max_tokens, len(rows), len(reqs)
    # p50 is the (N//2 + 1)-th latency (`summary`): the wave it finishes in
    waves, p50_waves = math.ceil(N / B), math.ceil((min(N - 1, N // 2) + 1) / B)
    out = {"batch": B, "threads": torch.get_num_threads(), "lone_requests_timed": len(singles), "waves": waves}
    for c in clocks:
        med = lambda xs: statistics.median(xs) if xs else 0.0  # noqa: E731
        t1 = med([s for r in singles for s in r[c][1]])
        prefill1 = statistics.fmean(r[c][0] for r in singles)
        tB, tBm = med(mixed[c][1]), med(merged[c][1])
        lone_s = prefill1 + (k - 1) * t1
        wave, wave_m = mixed[c][0] + (k - 1) * tB, merged[c][0] + (k - 1) * tBm
        out[c] = {"step1_s": t1, "prefill1_s": prefill1, "stepB_rows_s": tB, "stepB_merged_s": tBm,
                  "prefillB_rows_s": mixed[c][0], "prefillB_merged_s": merged[c][0],
                  "per_row_over_merged_step": tB / tBm if tBm else None,
                  "per_row_over_merged_prefill": mixed[c][0] / merged[c][0] if merged[c][0] else None,
                  "lone_request_s": lone_s, "wave_s": wave, "wave_merged_s": wave_m,
                  "throughput_limit": N * lone_s / (waves * wave), "p50_limit": p50_waves * wave / lone_s,
                  # the same on one set of merged weights: what per-row experts cost the limits
                  "throughput_limit_merged": N * lone_s / (waves * wave_m),
                  "p50_limit_merged": p50_waves * wave_m / lone_s}
    return out


def cpu_seconds(pid: int) -> float | None:
    """CPU seconds (user + system) a process has used so far, from /proc (None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    except (OSError, ValueError, IndexError):
        return None


async def one(client, req: dict, timeout: float) -> dict:
    t = time.perf_counter()
    try:
        r = await asyncio.wait_for(client.chat.completions.create(**req), timeout)
        return {"ok": True, "seconds": time.perf_counter() - t, "tokens": r.usage.completion_tokens,
                "text": r.choices[0].message.content, "expert": r.expert}
    except Exception as e:  # noqa: BLE001 - counted as a failure and reported
        return {"ok": False, "seconds": time.perf_counter() - t, "error": f"{type(e).__name__}: {e}"[:300]}


async def run_round(url: str, reqs: list[dict], concurrent: bool, timeout: float) -> tuple[list[dict], float]:
    import openai

    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=timeout) as client:
        t = time.perf_counter()
        if concurrent:
            out = await asyncio.gather(*(one(client, r, timeout) for r in reqs))
        else:
            out = [await one(client, r, timeout) for r in reqs]
        return list(out), time.perf_counter() - t


def summary(results: list[dict], wall: float) -> dict:
    ok = [r for r in results if r["ok"]]
    lat = sorted(r["seconds"] for r in ok)
    tokens = sum(r["tokens"] for r in ok)

    def pct(q: float) -> float | None:
        return round(lat[min(len(lat) - 1, int(q * len(lat)))], 3) if lat else None

    return {"requests": len(results), "failures": len(results) - len(ok), "wall_s": round(wall, 3),
            "p50_s": pct(0.50), "p99_s": pct(0.99), "mean_s": round(statistics.fmean(lat), 3) if lat else None,
            "requests_per_s": round(len(ok) / wall, 3), "tokens_per_s": round(tokens / wall, 2),
            "completion_tokens": tokens, "errors": sorted({r["error"] for r in results if not r["ok"]})[:5]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--experts", default=None, help="expert set (default: random experts math, code in a temp dir)")
    ap.add_argument("--models", default="base,math,code", help="request models, cycled (add 'auto' for pass 1)")
    ap.add_argument("--requests", type=int, default=64, help="N: requests sent at once, then one at a time")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--max-batch-size", type=int, default=None,
                    help="the server's batch (default: --requests, so all N decode together)")
    ap.add_argument("--batch-wait-ms", type=float, default=10)
    ap.add_argument("--threads", type=int, default=1, help="the server's torch threads, and the engine's in the "
                                                              "limit measurement (1: robust on a shared machine)")
    ap.add_argument("--no-mix-experts", dest="mix_experts", action="store_false",
                    help="the server's --no-mix-experts: one expert per batch, on merged weights (the limits stay "
                         "the per-row and merged ones)")
    ap.add_argument("--lone", type=int, default=8, help="lone requests timed on the engine for the limit")
    ap.add_argument("--no-limit", action="store_true", help="skip the engine measurement (no limits)")
    ap.add_argument("--timeout", type=float, default=240, help="seconds per request and per round")
    ap.add_argument("--out", default="bench/out/serving.json")
    args = ap.parse_args()
    if not 1 <= args.requests <= 256:
        raise SystemExit("--requests must be in 1..256")
    batch = args.max_batch_size or args.requests
    if batch < 1 or args.lone < 1 or args.max_tokens < 1:
        raise SystemExit("--max-batch-size, --lone and --max-tokens must be positive")

    # `timeout`/Ctrl-C: unwind through `finally`, which stops the server we started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from transformer_squared.fileio import atomic_write_json

    models = args.models.split(",")
    reqs = [{"model": models[i % len(models)], "temperature": 0, "max_tokens": args.max_tokens,
             "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)].format(a=i + 3, b=2 * i + 1)}]}
            for i in range(args.requests)]
    tmp = tempfile.TemporaryDirectory()
    experts = args.experts
    if experts is None:
        experts = tmp.name
        make_experts(args.model, Path(experts), [m for m in ("math", "code")])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "transformer_squared.cli.main", "serve", "--model", args.model, "--experts",
           experts, "--host", "127.0.0.1", "--port", str(port), "--max-batch-size", str(batch),
           "--batch-wait-ms", str(args.batch_wait_ms), "--max-queue", str(max(64, args.requests)),
           "--max-tokens", str(args.max_tokens), "--threads", str(args.threads), "--log-level", "warning",
           "--mix-experts" if args.mix_experts else "--no-mix-experts"]
    log = open(Path(tmp.name) / "serve.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    res: dict = {"model": args.model, "models": models, "requests": args.requests, "max_tokens": args.max_tokens,
                 "max_batch_size": batch, "batch_wait_ms": args.batch_wait_ms, "threads": args.threads,
                 "mix_experts": args.mix_experts,
                 "cpu": cpu_name(), "cpus": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                 "loadavg_start": os.getloadavg()[0], "targets": {"throughput_min": TARGET_THROUGHPUT,
                                                                  "p50_max": TARGET_P50}}
    try:
        try:
            t = time.perf_counter()
            wait_healthy(url, proc, timeout=300)
            res["startup_s"] = round(time.perf_counter() - t, 2)
            # one warm-up request per model, one at a time (first merges, first-call allocations), then together
            # (the per-row factors' packed copies): what a server pays once in its life is not timed
            warm = [{**reqs[i], "max_tokens": 2} for i in range(min(len(models), len(reqs)))]
            asyncio.run(run_round(url, warm, False, args.timeout))
            asyncio.run(run_round(url, warm, True, args.timeout))
            before, cpu0 = health(url)["stats"], cpu_seconds(proc.pid)
            conc, wall_c = asyncio.run(run_round(url, reqs, True, args.timeout))
            mid, cpu1 = health(url)["stats"], cpu_seconds(proc.pid)
            res["concurrent"] = summary(conc, wall_c)
            res["concurrent"]["server_cpu_s"] = round(cpu1 - cpu0, 2) if cpu0 is not None else None
            res["concurrent"]["joins"] = mid["batches"] - before["batches"]
            res["concurrent"]["steps"] = mid["steps"] - before["steps"]
            res["concurrent"]["max_batch"] = mid["max_batch"]
            atomic_write_json(args.out, res)  # partial results survive an interrupted sequential round
            seq, wall_s = asyncio.run(run_round(url, reqs, False, args.timeout))
            cpu2 = cpu_seconds(proc.pid)
            res["sequential"] = summary(seq, wall_s)
            res["sequential"]["server_cpu_s"] = round(cpu2 - cpu1, 2) if cpu1 is not None else None
            res["speedup_requests_per_s"] = round(res["concurrent"]["requests_per_s"] /
                                                  max(res["sequential"]["requests_per_s"], 1e-9), 2)
            res["p50_over_lone"] = round(res["concurrent"]["p50_s"] / max(res["sequential"]["p50_s"] or 0, 1e-9),
                                         2) if res["concurrent"]["p50_s"] else None
            res["greedy_answers_differing"] = sum(a["ok"] and b["ok"] and a["text"] != b["text"]
                                                  for a, b in zip(conc, seq))
            h = health(url)
            res["server_stats"], res["last_batches"] = h["stats"], h["recent_batches"]
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                res["server_exit"] = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                res["server_exit"] = "killed"
            log.close()
        # The machine's limit, measured after the server has gone (the two do not compete for the cores).
        if not args.no_limit:
            res["loadavg_limit_start"] = os.getloadavg()[0]
            res["engine"] = engine_limits(args.model, experts, reqs, args.max_tokens, batch, args.threads,
                                          args.lone)
            res.update(limits(res))
    finally:
        res["loadavg_end"] = os.getloadavg()[0]
        tmp.cleanup()

    atomic_write_json(args.out, res)
    report(res, args.out)
    return 0 if res["concurrent"]["failures"] == 0 and res["sequential"]["failures"] == 0 else 1


def limits(res: dict) -> dict:
    """The limits (from the engine's CPU seconds) next to the measured figures, and how far the server is from
    them: `throughput_overhead` = limit / measured, `p50_overhead` = measured / limit (1.0: none); and, on the
    steadier CPU clock, the server's CPU seconds for each round over the engine's for the same work."""
    e = res["engine"]["cpu"]
    conc, seq, n = res["concurrent"], res["sequential"], res["requests"]
    out = {"throughput_limit": round(e["throughput_limit"], 2), "p50_limit": round(e["p50_limit"], 2),
           "throughput_limit_merged": round(e["throughput_limit_merged"], 2),
           "p50_limit_merged": round(e["p50_limit_merged"], 2), "throughput_overhead": None, "p50_overhead": None,
           "server_cpu_over_engine": None, "throughput_cpu": None}  # (no /proc: no server CPU seconds)
    if res.get("speedup_requests_per_s"):
        out["throughput_overhead"] = round(e["throughput_limit"] / res["speedup_requests_per_s"], 2)
    if res.get("p50_over_lone"):
        out["p50_overhead"] = round(res["p50_over_lone"] / e["p50_limit"], 2)
    if conc.get("server_cpu_s") and seq.get("server_cpu_s"):
        out["server_cpu_over_engine"] = {
            "concurrent": round(conc["server_cpu_s"] / (res["engine"]["waves"] * e["wave_s"]), 2),
            "sequential": round(seq["server_cpu_s"] / (n * e["lone_request_s"]), 2)}
        out["throughput_cpu"] = round(seq["server_cpu_s"] / conc["server_cpu_s"], 2)  # the speed-up on CPU seconds
    return out


def report(res: dict, out: str) -> None:
    print(f"{'round':<12}{'requests':>9}{'failures':>9}{'wall s':>9}{'p50 s':>8}{'p99 s':>8}{'req/s':>8}{'tok/s':>8}"
          f"{'server CPU s':>14}")
    for name in ("concurrent", "sequential"):
        r = res[name]
        print(f"{name:<12}{r['requests']:>9}{r['failures']:>9}{r['wall_s']:>9.2f}{r['p50_s'] or 0:>8.2f}"
              f"{r['p99_s'] or 0:>8.2f}{r['requests_per_s']:>8.2f}{r['tokens_per_s']:>8.1f}"
              f"{r.get('server_cpu_s') or float('nan'):>14.2f}")
    if "engine" in res:
        e, c = res["engine"], res["engine"]["cpu"]
        print(f"engine alone, CPU seconds ({e['threads']} thread(s)): a lone request {c['lone_request_s']:.2f} s "
              f"(prefill {c['prefill1_s']:.3f} + {res['max_tokens'] - 1} x {c['step1_s']:.4f}); {e['batch']} "
              f"together {c['wave_s']:.2f} s (prefill {c['prefillB_rows_s']:.2f} + {res['max_tokens'] - 1} x "
              f"{c['stepB_rows_s']:.4f}, per-row experts: {c['per_row_over_merged_step']:.2f}x the merged "
              f"{c['stepB_merged_s']:.4f} s step; prefill {c['per_row_over_merged_prefill']:.2f}x) x {e['waves']} "
              f"wave(s)")
        over = res.get("server_cpu_over_engine") or {}
        print(f"limits: throughput {res['throughput_limit']}x, p50 {res['p50_limit']}x (on one set of merged weights "
              f"instead of per-row experts: {res['throughput_limit_merged']}x, {res['p50_limit_merged']}x); server "
              f"over the limit: "
              f"throughput {res['throughput_overhead']}x, p50 {res['p50_overhead']}x; server CPU over the "
              f"engine's: concurrent {over.get('concurrent')}x, sequential {over.get('sequential')}x")
    print(f"throughput {res['speedup_requests_per_s']}x sequential (target >= {TARGET_THROUGHPUT:g}x"
          + (f", limit {res['throughput_limit']}x" if "throughput_limit" in res else "")
          + f"); p50 {res['p50_over_lone']}x a lone request's (target <= {TARGET_P50:g}x"
          + (f", limit {res['p50_limit']}x" if "p50_limit" in res else "") + ")")
    print(f"{res['concurrent']['joins']} joins over {res['concurrent']['steps']} steps (max "
          f"{res['concurrent']['max_batch']} rows); greedy answers differing: {res['greedy_answers_differing']}; "
          f"{res['cpu']}, load average {res['loadavg_start']:.1f} -> {res['loadavg_end']:.1f}; saved {out}")


if __name__ == "__main__":
    sys.exit(main())
