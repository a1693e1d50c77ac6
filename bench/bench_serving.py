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
The issue's targets (#14 item 2) are printed next to the figures: throughput >= 4x sequential, p50 <= 3x a lone
request's, no failures.
Everything is bounded: one round each, a timeout per request and per round; the server is stopped at the end.

    python bench/bench_serving.py [--requests 64] [--max-tokens 16] [--out bench/out/serving.json]
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
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--max-batch-size", type=int, default=16)
    ap.add_argument("--batch-wait-ms", type=float, default=10)
    ap.add_argument("--threads", type=int, default=1, help="the server's torch threads (1: robust on a shared "
                                                              "machine, as the other benchmarks)")
    ap.add_argument("--timeout", type=float, default=240, help="seconds per request and per round")
    ap.add_argument("--out", default="bench/out/serving.json")
    args = ap.parse_args()
    if not 1 <= args.requests <= 256:
        raise SystemExit("--requests must be in 1..256")

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
           experts, "--host", "127.0.0.1", "--port", str(port), "--max-batch-size", str(args.max_batch_size),
           "--batch-wait-ms", str(args.batch_wait_ms), "--max-queue", str(max(64, args.requests)),
           "--max-tokens", str(args.max_tokens), "--threads", str(args.threads), "--log-level", "warning"]
    log = open(Path(tmp.name) / "serve.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    res: dict = {"model": args.model, "models": models, "requests": args.requests, "max_tokens": args.max_tokens,
                 "max_batch_size": args.max_batch_size, "batch_wait_ms": args.batch_wait_ms, "threads": args.threads,
                 "cpu": cpu_name(), "cpus": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                 "loadavg_start": os.getloadavg()[0]}
    try:
        t = time.perf_counter()
        wait_healthy(url, proc, timeout=300)
        res["startup_s"] = round(time.perf_counter() - t, 2)
        # one warm-up request per model: first merges, first-call allocations
        asyncio.run(run_round(url, [{**reqs[i], "max_tokens": 2} for i in range(len(models))], False, args.timeout))
        before = health(url)["stats"]
        conc, wall_c = asyncio.run(run_round(url, reqs, True, args.timeout))
        mid = health(url)["stats"]
        res["concurrent"] = summary(conc, wall_c)
        res["concurrent"]["joins"] = mid["batches"] - before["batches"]
        res["concurrent"]["steps"] = mid["steps"] - before["steps"]
        res["concurrent"]["max_batch"] = mid["max_batch"]
        atomic_write_json(args.out, res)  # partial results survive an interrupted sequential round
        seq, wall_s = asyncio.run(run_round(url, reqs, False, args.timeout))
        res["sequential"] = summary(seq, wall_s)
        res["speedup_requests_per_s"] = round(res["concurrent"]["requests_per_s"] /
                                              max(res["sequential"]["requests_per_s"], 1e-9), 2)
        res["p50_over_lone"] = round(res["concurrent"]["p50_s"] / max(res["sequential"]["p50_s"] or 0, 1e-9), 2) \
            if res["concurrent"]["p50_s"] else None
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
        res["loadavg_end"] = os.getloadavg()[0]
        tmp.cleanup()

    atomic_write_json(args.out, res)
    print(f"{'round':<12}{'requests':>9}{'failures':>9}{'wall s':>9}{'p50 s':>8}{'p99 s':>8}{'req/s':>8}{'tok/s':>8}")
    for name in ("concurrent", "sequential"):
        r = res[name]
        print(f"{name:<12}{r['requests']:>9}{r['failures']:>9}{r['wall_s']:>9.2f}{r['p50_s'] or 0:>8.2f}"
              f"{r['p99_s'] or 0:>8.2f}{r['requests_per_s']:>8.2f}{r['tokens_per_s']:>8.1f}")
    print(f"throughput {res['speedup_requests_per_s']}x sequential (target >= 4x); p50 {res['p50_over_lone']}x a "
          f"lone request's (target <= 3x); {res['concurrent']['joins']} joins over {res['concurrent']['steps']} "
          f"steps (max {res['concurrent']['max_batch']} rows); greedy answers differing: "
          f"{res['greedy_answers_differing']}; {res['cpu']}, load average {res['loadavg_start']:.1f} -> "
          f"{res['loadavg_end']:.1f}; saved {args.out}")
    return 0 if res["concurrent"]["failures"] == 0 and res["sequential"]["failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
