"""Issue #14's figures in one JSON object, from short runs of the benchmarks, each in its own subprocess.

    python bench/summary.py --json [--out bench/out/summary.json] [--skip serving,...] [--timeout 1200]
                               [--work-dir bench/out/summary]

Runs, one after the other (so they do not compete for the cores), with OMP_WAIT_POLICY=PASSIVE:

| name       | script (short settings)                                               | gives                               |
|------------|-----------------------------------------------------------------------|-------------------------------------|
| roofline   | bench_roofline.py --batch-sizes 16,64 --new-tokens 32 --engine        | decode_step_over_floor_b16 / _b64,  |
|            |   --no-generate --prefill-batch-sizes 16 --reps 3                     | prefill_over_floor (batch 16)       |
| roofline_1t| the same with --cpu-clock (OMP_NUM_THREADS=1)                         | the same ratios at one thread on    |
|            |                                                                       | the CPU clock: *_1thread_cpu        |
| generation | bench_generation.py --batch-sizes 16 --new-tokens 32 --rollout 0      | the anchor: engine vs `generate`,   |
|            |   --variants engine,generate --compiled-generate 16 --precision fast  | eager and static cache + compile;   |
|            |                                                                       | fast_mode, fast_mode_speedup_b16    |
| serving    | bench_serving.py --requests 64 --max-tokens 16 (OMP_NUM_THREADS=1)    | serving_throughput_over_sequential, |
|            |                                                                       | serving_p50_over_single; limits:    |
|            |                                                                       | serving_throughput_limit, _p50_limit|
| training   | bench_training.py --prompts 4 --new-tokens 32 --steps 1               | svf_over_lora_step                  |
|            |   (OMP_NUM_THREADS=1)                                                 |                                     |
| rl_step    | bench_rl_step.py (8 prompts x 4 samples x 64 tokens, 2 steps)         | rl_step_seconds_smollm2,            |
|            |   --rollout-precision exact,fast                                      | rl_step_floor_seconds_smollm2,      |
|            |                                                                       | rl_step_seconds_smollm2_fast        |

Each writes its JSON and log under `--work-dir` (bench/out/summary/); a benchmark that fails or times out leaves its keys null
with a `<key>_reason` (its last error line), and the others still run. `fast_mode` is the precision the engine's fast mode
chose on this machine (int8 or bf16; generation/precision.py) and `fast_mode_speedup_b16` its decoding tokens/s
over the exact engine's at batch 16, same process, same prompts; both null with the reason where the machine
has no fast mode (it then runs exact). The limits (`serving_throughput_limit`, `serving_p50_limit`: what a
zero-overhead server would reach with this engine on this machine) and the floor (`rl_step_floor_seconds_smollm2`:
the fp32 products and GEMM time of the step's work) are measured by the benchmarks in the same run; a target on
the wrong side of its limit or floor cannot be met here by the server or the trainer alone. Never a made-up number. `targets` holds
issue #14's target for each key and `meets_targets` whether the figure meets it. The CPU, the load average before
and after each benchmark, the commit and any uncommitted library files are recorded: on the shared 2-core
machines of this workplace every figure depends on what else runs (short runs, one repetition: noisy).

`--tiny --model DIR` runs every benchmark at toy sizes on a (tiny) model: for tests only, its figures mean
nothing. With `--json`, stdout holds only the JSON object; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench scripts' shared helpers
from cpuinfo import cpu_name  # noqa: E402

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
DEFAULT_MODEL = "smollm2-135m-instruct"

# Issue #14's targets, per key: ("max", x) means the figure must be <= x, ("min", x) >= x.
TARGETS = {
    "decode_step_over_floor_b16": ("max", 1.3),
    "decode_step_over_floor_b64": ("max", 1.3),
    "prefill_over_floor": ("max", 1.2),
    "fast_mode_speedup_b16": ("min", 2.0),
    "serving_throughput_over_sequential": ("min", 4.0),
    "serving_p50_over_single": ("max", 3.0),
    "svf_over_lora_step": ("max", 1.1),
    "rl_step_seconds_smollm2": ("max", 15.0),
}


# What this machine allows for the targeted figures, measured in the same runs (no target of their own).
LIMITS = ("serving_throughput_limit", "serving_p50_limit", "rl_step_floor_seconds_smollm2")


def commands(tiny: bool, model: str, out: Path) -> dict[str, tuple[list[str], dict]]:
    """name -> (argv after the interpreter, extra environment) of each short benchmark run."""
    def j(name: str) -> list[str]:
        return ["--out", str(out / f"{name}.json")]

    m = ["--model", model]
    if tiny:
        return {
            "roofline": (["bench_roofline.py", *m, "--batch-sizes", "16,64", "--new-tokens", "4", "--engine",
                          "--no-generate", "--prefill-batch-sizes", "16", "--reps", "1", *j("roofline")], {}),
            "roofline_1t": (["bench_roofline.py", *m, "--batch-sizes", "16,64", "--new-tokens", "4", "--engine",
                             "--no-generate", "--prefill-batch-sizes", "16", "--reps", "1", "--cpu-clock",
                             *j("roofline_1t")], {"OMP_NUM_THREADS": "1"}),
            "generation": (["bench_generation.py", *m, "--batch-sizes", "16", "--new-tokens", "4", "--rollout", "0",
                            "--variants", "engine,generate", "--precision", "fast", *j("generation")], {}),
            "serving": (["bench_serving.py", *m, "--requests", "4", "--max-tokens", "4", *j("serving")],
                        {"OMP_NUM_THREADS": "1"}),
            "training": (["bench_training.py", *m, "--prompts", "2", "--new-tokens", "4", "--steps", "1",
                          *j("training")], {"OMP_NUM_THREADS": "1"}),
            "rl_step": (["bench_rl_step.py", *m, "--prompts", "2", "--samples", "2", "--new-tokens", "4",
                         "--steps", "2", "--rollout-precision", "exact,fast", *j("rl_step")], {}),
        }
    return {
        "roofline": (["bench_roofline.py", *m, "--batch-sizes", "16,64", "--new-tokens", "32", "--engine",
                      "--no-generate", "--prefill-batch-sizes", "16", "--reps", "3", *j("roofline")], {}),
        "roofline_1t": (["bench_roofline.py", *m, "--batch-sizes", "16,64", "--new-tokens", "32", "--engine",
                         "--no-generate", "--prefill-batch-sizes", "16", "--reps", "3", "--cpu-clock",
                         *j("roofline_1t")], {"OMP_NUM_THREADS": "1"}),
        "generation": (["bench_generation.py", *m, "--batch-sizes", "16", "--new-tokens", "32", "--rollout", "0",
                        "--variants", "engine,generate", "--compiled-generate", "16", "--precision", "fast",
                        *j("generation")], {}),
        "serving": (["bench_serving.py", *m, "--requests", "64", "--max-tokens", "16", *j("serving")],
                    {"OMP_NUM_THREADS": "1"}),
        "training": (["bench_training.py", *m, "--prompts", "4", "--new-tokens", "32", "--steps", "1",
                      *j("training")], {"OMP_NUM_THREADS": "1"}),
        "rl_step": (["bench_rl_step.py", *m, "--steps", "2", "--rollout-precision", "exact,fast", *j("rl_step")], {}),
    }


def lose_first_when_out_of_memory() -> None:
    """(In the child, before exec) ask Linux's OOM killer to pick it first: on a shared machine the benchmark is
    the process to lose, not someone's long experiment."""
    try:
        Path("/proc/self/oom_score_adj").write_text("1000")
    except OSError:
        pass


def run_one(name: str, argv: list[str], env_extra: dict, out: Path, timeout: float) -> dict:
    """Run one benchmark script; return its record (command, seconds, load, exit status, error) and JSON."""
    log = out / f"{name}.log"
    json_path = out / f"{name}.json"
    json_path.unlink(missing_ok=True)  # never read a previous run's figures
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"), **env_extra}
    cmd = [sys.executable, str(BENCH / argv[0]), *argv[1:]]
    rec = {"command": " ".join([*(f"{k}={v}" for k, v in env_extra.items()), "python", f"bench/{argv[0]}",
                                *argv[1:]]),
           "log": str(log), "load_avg_start": list(os.getloadavg())}
    print(f"[summary] {name}: {rec['command']}", file=sys.stderr, flush=True)
    t = time.perf_counter()
    with open(log, "w") as f:
        # its own process group: on a timeout, what it started (bench_serving's server, spawned children) stops too
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=lose_first_when_out_of_memory)
        try:
            rec["returncode"] = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_group(proc)
            rec["returncode"] = None
            rec["error"] = f"timed out after {timeout:.0f} s"
    rec["seconds"] = round(time.perf_counter() - t, 1)
    rec["load_avg_end"] = list(os.getloadavg())
    if rec["returncode"] not in (0, None) or (rec["returncode"] == 0 and not json_path.is_file()):
        rec["error"] = ("killed (SIGKILL: out of memory?)" if rec["returncode"] == -9 else
                        last_error(log) or f"exit status {rec['returncode']}, no JSON written")
    data = None
    if json_path.is_file():
        try:
            data = json.loads(json_path.read_text())
        except ValueError as e:
            rec["error"] = rec.get("error") or f"unreadable JSON: {e}"
    print(f"[summary] {name}: {rec['seconds']:.0f} s, exit {rec['returncode']}"
          + (f", error: {rec['error']}" if rec.get("error") else ""), file=sys.stderr, flush=True)
    return {"record": rec, "data": data}


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the benchmark's process group (bench_serving stops its server on it), SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, 60), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            if sig == signal.SIGTERM:
                os.killpg(proc.pid, signal.SIGKILL)  # children that outlived their parent
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            pass
        return


def last_error(log: Path) -> str | None:
    """The last meaningful line of a log (a traceback's last line is its error)."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return None
    lines = [ln for ln in lines if "it/s]" not in ln and "s/it]" not in ln]  # progress bars
    return lines[-1][:300] if lines else None


def dig(data: dict | None, *path):
    """data[p0][p1]... or None where anything along the path is missing."""
    for p in path:
        if not isinstance(data, dict) or p not in data:
            return None
        data = data[p]
    return data


def git_state() -> dict:
    """The commit, and uncommitted changes to the library or the benchmarks (what was actually measured)."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            return ""

    # porcelain lines are "XY path": the status's leading space matters, so nothing is stripped before [3:]
    dirty = [ln[3:] for ln in git("status", "--porcelain", "--", "transformer_squared", "bench").splitlines()
             if ln.strip()]
    return {"git_commit": git("rev-parse", "--short", "HEAD").strip() or None, "uncommitted_files": dirty}


def collect(results: dict[str, dict], skipped: set[str]) -> dict:
    """The summary keys from the benchmarks' JSON: each a number, or None with `<key>_reason`."""
    out: dict = {}

    def put(key: str, bench: str, value, missing: str | None = None) -> None:
        out[key] = value
        if value is not None:
            return
        if bench in skipped:
            out[f"{key}_reason"] = f"{bench} skipped (--skip)"
        elif results.get(bench, {}).get("record", {}).get("error"):
            out[f"{key}_reason"] = f"{bench} failed: {results[bench]['record']['error']}"
        else:
            out[f"{key}_reason"] = missing or f"{bench} wrote no such figure"

    roof = results.get("roofline", {}).get("data")
    put("decode_step_over_floor_b16", "roofline", dig(roof, "runs", "16", "engine_step_over_floor"))
    put("decode_step_over_floor_b64", "roofline", dig(roof, "runs", "64", "engine_step_over_floor"))
    put("prefill_over_floor", "roofline", dig(roof, "runs", "16", "engine_prefill_over_floor"))
    # The same ratios at one thread on the process's CPU clock (steadier on a shared machine; no thread hand-offs):
    # what the engine's own overhead is, apart from what a second thread costs in synchronisation.
    roof1 = results.get("roofline_1t", {}).get("data")
    put("decode_step_over_floor_b16_1thread_cpu", "roofline_1t",
        dig(roof1, "runs", "16", "cpu_clock", "engine_step_over_floor"))
    put("decode_step_over_floor_b64_1thread_cpu", "roofline_1t",
        dig(roof1, "runs", "64", "cpu_clock", "engine_step_over_floor"))
    put("prefill_over_floor_1thread_cpu", "roofline_1t",
        dig(roof1, "runs", "16", "cpu_clock", "engine_prefill_over_floor"))
    # The fast mode: the precision it resolved to here, and its speed-up over the exact engine at batch 16.
    gen = results.get("generation", {}).get("data")
    prec = dig(gen, "precision") or {}
    chosen = prec.get("compute_precision")
    low = chosen if chosen not in (None, "exact", "fp32") else None
    put("fast_mode", "generation", low,
        f"no fast mode on this machine: {prec.get('reason')}" if chosen else None)
    put("fast_mode_speedup_b16", "generation",
        dig(gen, "runs", "16", "engine_fast", "speedup_vs_engine") if low else None,
        "no fast mode to time (see fast_mode_reason)" if chosen and not low else None)
    if low:
        out["fast_mode_same_ids_as_exact_b16"] = dig(gen, "runs", "16", "engine_fast", "same_as_exact")

    serving = results.get("serving", {}).get("data")
    put("serving_throughput_over_sequential", "serving", dig(serving, "speedup_requests_per_s"))
    put("serving_p50_over_single", "serving", dig(serving, "p50_over_lone"))
    # The machine's limits for the same workload (bench_serving's engine measurement: a zero-overhead server)
    put("serving_throughput_limit", "serving", dig(serving, "throughput_limit"))
    put("serving_p50_limit", "serving", dig(serving, "p50_limit"))
    training = results.get("training", {}).get("data")
    put("svf_over_lora_step", "training", dig(training, "ratio_svf_over_lora", "step_seconds"))
    if dig(training, "ratio_svf_over_lora_cpu", "step_seconds") is not None:  # CPU seconds: steadier under load
        out["svf_over_lora_step_cpu_seconds"] = training["ratio_svf_over_lora_cpu"]["step_seconds"]
    rl = results.get("rl_step", {}).get("data")
    rl_runs = dig(rl, "runs") or []
    rl_run = next((r for r in rl_runs if r.get("rollout_precision", "exact") == "exact"), {})
    rl_fast = next((r for r in rl_runs if r.get("rollout_precision") == "fast"), {})
    put("rl_step_seconds_smollm2", "rl_step", rl_run.get("step_s"), rl_run.get("error"))
    if rl_run.get("step_s") is not None:
        out["rl_step_parts_smollm2"] = {k: round(rl_run[k], 3) for k in (
            "merge_s", "rollout_s", "rollout_generate_s", "rollout_score_s", "gradient_s", "gradient_forward_s",
            "gradient_backward_s", "optimizer_s") if k in rl_run}
        out["rl_step_threads"] = rl_run.get("threads")
    # The machine's floor for the same step (bench_rl_step's machine_floor: fp32 products and GEMM throughput)
    put("rl_step_floor_seconds_smollm2", "rl_step", rl_run.get("floor_s"), rl_run.get("error") or rl_run.get(
        "floor_error"))
    if rl_run.get("floor_s") is not None:
        out["rl_step_over_floor_smollm2"] = rl_run.get("step_over_floor")
    # The same step with t2 train's default rollouts (auto = fast on CPU: int8 or bf16, truncated IS in the loss)
    put("rl_step_seconds_smollm2_fast", "rl_step", rl_fast.get("step_s"),
        rl_fast.get("error") or ("rl_step ran no fast-rollout step" if rl_runs else None))
    if rl_fast.get("step_s") is not None:
        out["rl_step_fast_rollout_precision"] = dig(rl_fast, "rollout_engine", "compute_precision")
        out["rl_step_parts_smollm2_fast"] = {k: round(rl_fast[k], 3) for k in (
            "merge_s", "rollout_s", "gradient_s", "optimizer_s") if k in rl_fast}

    # Item 3's anchor: transformers' own fastest generate (static cache + torch.compile) next to the engine.
    b16 = dig(gen, "runs", "16") or {}
    comp = b16.get("generate_static_compiled") or {}
    anchor = {"batch": 16, "new_tokens": b16.get("new_tokens"),
              "engine_tokens_per_s": dig(b16, "engine", "tokens_per_s"),
              "engine_s_per_step": dig(b16, "engine", "s_per_step"),
              "generate_tokens_per_s": dig(b16, "generate", "tokens_per_s"),
              "generate_s_per_step": dig(b16, "generate", "s_per_step"),
              "generate_static_compiled_tokens_per_s": comp.get("tokens_per_s"),
              "generate_static_compiled_s_per_step": comp.get("s_per_step"),
              "compile_s": comp.get("compile_s"),
              "engine_over_compiled": comp.get("engine_speedup"),
              "compiled_same_ids_as_engine": comp.get("greedy_match_engine")}
    if comp.get("error"):
        anchor["compiled_error"] = comp["error"]
    elif not comp:
        if "generation" in skipped:
            anchor["compiled_error"] = "generation skipped (--skip)"
        elif results.get("generation", {}).get("record", {}).get("error"):
            anchor["compiled_error"] = f"generation failed: {results['generation']['record']['error']}"
        else:
            anchor["compiled_error"] = "not run (--tiny: compiling takes minutes)" if gen else "no figures"
    out["anchor_generate_b16"] = anchor
    return out


def meets(summary: dict) -> dict:
    """Whether each figure meets its target (None where there is no figure)."""
    res = {}
    for key, (kind, bound) in TARGETS.items():
        v = summary.get(key)
        res[key] = None if v is None else (v <= bound if kind == "max" else v >= bound)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print only the JSON object on stdout")
    ap.add_argument("--out", default="bench/out/summary.json", help="where to save the JSON too")
    ap.add_argument("--work-dir", default=str(BENCH / "out" / "summary"),
                    help="where each benchmark's JSON and log go")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--skip", default="", help="comma-separated benchmarks not to run (their keys stay null)")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds per benchmark before it is stopped")
    ap.add_argument("--tiny", action="store_true", help="toy sizes, for tests (figures meaningless)")
    a = ap.parse_args(argv)
    out_dir = Path(a.work_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    cmds = commands(a.tiny, a.model, out_dir)
    skipped = {s for s in a.skip.split(",") if s}
    if bad := skipped - set(cmds):
        ap.error(f"--skip: unknown {sorted(bad)[0]!r} (one of {', '.join(cmds)})")

    t0 = time.perf_counter()
    load_start = list(os.getloadavg())
    results = {name: run_one(name, argv_, env, out_dir, a.timeout)
               for name, (argv_, env) in cmds.items() if name not in skipped}
    try:
        from importlib.metadata import version

        torch_version = version("torch")
    except Exception:  # noqa: BLE001 - a record, not a requirement
        torch_version = None
    summary = {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "model": a.model, "tiny": a.tiny,
               "date": time.strftime("%Y-%m-%d %H:%M:%S"), "torch": torch_version, **git_state(),
               "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
               "load_avg": {"start": load_start, "end": list(os.getloadavg())},
               **collect(results, skipped)}
    summary["targets"] = {k: {kind: bound} for k, (kind, bound) in TARGETS.items()}
    summary["meets_targets"] = meets(summary)
    summary["benchmarks"] = {name: r["record"] for name, r in results.items()}
    summary["seconds"] = round(time.perf_counter() - t0, 1)

    sys.path.insert(0, str(REPO))
    from transformer_squared.fileio import atomic_write_json

    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(a.out, summary)
    if a.json:
        print(json.dumps(summary, indent=2))
    else:
        for key, (kind, bound) in TARGETS.items():
            v = summary[key]
            shown = f"{v:.3g}" if v is not None else f"null ({summary.get(key + '_reason')})"
            print(f"{key:<38} {shown:<12} target {'<=' if kind == 'max' else '>='} {bound}")
        for key in LIMITS:  # the machine's side of the targets above
            v = summary[key]
            print(f"{key:<38} " + (f"{v:.3g}" if v is not None else f"null ({summary.get(key + '_reason')})"))
        print(f"{summary['cpu']}, load average {load_start[0]:.1f} -> {summary['load_avg']['end'][0]:.1f}, "
              f"{summary['seconds']:.0f} s; wrote {a.out}")
    print(f"[summary] wrote {a.out}", file=sys.stderr)
    return 0 if all(not r["record"].get("error") for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
