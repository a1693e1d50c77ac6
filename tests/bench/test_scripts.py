"""bench/bench_rl_step.py and bench/summary.py run and print their documented JSON keys (never timings: those
are the benchmarks' business, see bench/README.md). Tiny sizes, a tiny random model, a private T2_CACHE."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SUMMARY_KEYS = ("cpu", "load_avg", "targets", "meets_targets", "benchmarks", "decode_step_over_floor_b16",
                "decode_step_over_floor_b64", "prefill_over_floor", "fast_mode_speedup_b16", "fast_mode",
                "serving_throughput_over_sequential", "serving_p50_over_single", "svf_over_lora_step",
                "rl_step_seconds_smollm2", "anchor_generate_b16", "serving_throughput_limit", "serving_p50_limit",
                "rl_step_floor_seconds_smollm2", "decode_step_over_floor_b16_1thread_cpu",
                "decode_step_over_floor_b64_1thread_cpu", "prefill_over_floor_1thread_cpu",
                "rl_step_seconds_smollm2_fast")
UNTARGETED = ("decode_step_over_floor_b16_1thread_cpu", "decode_step_over_floor_b64_1thread_cpu",
              "prefill_over_floor_1thread_cpu", "rl_step_seconds_smollm2_fast")  # beside the targeted figures
LIMITS = ("serving_throughput_limit", "serving_p50_limit", "rl_step_floor_seconds_smollm2")  # no targets
TARGETED = ("decode_step_over_floor_b16", "decode_step_over_floor_b64", "prefill_over_floor",
            "fast_mode_speedup_b16", "serving_throughput_over_sequential", "serving_p50_over_single",
            "svf_over_lora_step", "rl_step_seconds_smollm2")
STEP_KEYS = ("step_s", "merge_s", "rollout_s", "rollout_generate_s", "rollout_score_s", "gradient_s",
             "gradient_forward_s", "gradient_backward_s", "optimizer_s")
FLOOR_KEYS = ("floor_s", "floor_rollout_s", "floor_rollout_prefill_s", "floor_rollout_decode_s", "floor_gradient_s",
              "step_over_floor", "floor_gemm_GFLOPs", "floor_cpu_s", "floor_gemm_GFLOPs_cpu", "step_cpu_s")


def run(args: list[str], tmp_path: Path, timeout: float, **env_extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "T2_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", **env_extra}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def check_summary(s: dict) -> None:
    for key in SUMMARY_KEYS:
        assert key in s, key
    assert set(s["targets"]) == set(TARGETED)
    for key in TARGETED + LIMITS + UNTARGETED:  # a figure, or null with the reason why
        assert s[key] is not None or s.get(f"{key}_reason"), key
    assert s["fast_mode"] in ("int8", "bf16") or (s["fast_mode"] is None and s["fast_mode_reason"])
    assert len(s["load_avg"]["start"]) == 3


def test_summary_with_everything_skipped_prints_every_key_null_with_its_reason(tmp_path):
    out = tmp_path / "summary.json"
    p = run(["bench/summary.py", "--json", "--out", str(out), "--work-dir", str(tmp_path / "work"),
             "--skip", "roofline,roofline_1t,generation,serving,training,rl_step"], tmp_path, 60)
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)  # stdout is the JSON object alone
    check_summary(s)
    assert all(s[k] is None for k in TARGETED + LIMITS + UNTARGETED)
    assert s["decode_step_over_floor_b16_1thread_cpu_reason"] == "roofline_1t skipped (--skip)"
    assert s["rl_step_seconds_smollm2_reason"] == "rl_step skipped (--skip)"
    assert s["rl_step_floor_seconds_smollm2_reason"] == "rl_step skipped (--skip)"
    assert s["serving_throughput_limit_reason"] == "serving skipped (--skip)"
    assert json.loads(out.read_text()) == s


def test_summary_refuses_an_unknown_benchmark_name(tmp_path):
    p = run(["bench/summary.py", "--json", "--skip", "nope", "--work-dir", str(tmp_path)], tmp_path, 60)
    assert p.returncode == 2 and "--skip: unknown 'nope'" in p.stderr


@pytest.mark.slow
def test_rl_step_tiny_prints_its_parts(tmp_path, tiny_model_dir, shared_data):
    out = tmp_path / "rl.json"
    p = run(["bench/bench_rl_step.py", "--model", str(tiny_model_dir), "--data-dir", str(shared_data),
             "--prompts", "2", "--samples", "2", "--new-tokens", "3", "--steps", "2", "--threads", "1",
             "--rollout-precision", "exact,int8", "--out", str(out)], tmp_path, 300)
    assert p.returncode == 0, p.stdout + p.stderr
    res = json.loads(out.read_text())
    for key in ("cpu", "loadavg_start", "loadavg_end", "settings", "target_step_seconds", "runs"):
        assert key in res, key
    assert [(r["rollout_precision"], r.get("rollout_engine", {}).get("compute_precision")) for r in res["runs"]] == [
        ("exact", "exact"), ("int8", "int8")], res["runs"]
    for row in res["runs"]:
        assert "error" not in row, row
        for key in STEP_KEYS + ("mode", "threads", "peak_rss_mb", "steps"):
            assert key in row, key
        # the machine's floor: present and positive (never compared with the step: both are timings)
        assert "floor_error" not in row, row["floor_error"]
        for key in FLOOR_KEYS:
            assert row[key] > 0, key
        assert all(len(s["decode_step_rows"]) > 0 and s["prefill_tokens"] > 0 for s in row["steps"])
        assert row["steps_timed"] == [2] and [s["rollouts"] for s in row["steps"]] == [4, 4]


def test_rl_step_refuses_an_unknown_rollout_precision(tmp_path):
    p = run(["bench/bench_rl_step.py", "--rollout-precision", "exact,fp8", "--out", str(tmp_path / "x.json")],
            tmp_path, 60)
    assert p.returncode == 2 and "--rollout-precision: 'fp8' is not one of" in p.stderr


@pytest.mark.slow
def test_summary_tiny_runs_every_benchmark(tmp_path, tiny_model_dir, shared_data):
    out = tmp_path / "summary.json"
    # T2_DATA_DIR: bench_training's and bench_rl_step's --data-dir default
    p = run(["bench/summary.py", "--json", "--tiny", "--model", str(tiny_model_dir), "--out", str(out),
             "--work-dir", str(tmp_path / "work")],
            tmp_path, 1200, T2_DATA_DIR=str(shared_data))
    s = json.loads(p.stdout)
    check_summary(s)
    assert set(s["benchmarks"]) == {"roofline", "roofline_1t", "generation", "serving", "training", "rl_step"}
    for name, rec in s["benchmarks"].items():
        assert not rec.get("error"), (name, rec, Path(rec["log"]).read_text()[-2000:])
    for key in TARGETED:
        # every figure is there, but the fast mode's speed-up on a machine with no fast mode
        assert (s[key] is None) == (key == "fast_mode_speedup_b16" and s["fast_mode"] is None), key
    for key in LIMITS + UNTARGETED:  # limits, floor, and the figures beside the targeted ones: there and positive
        assert s[key] > 0, key
    assert s["rl_step_fast_rollout_precision"] == s["fast_mode"]  # fast rollouts are the engine's fast mode
    serving = json.loads((tmp_path / "work" / "serving.json").read_text())
    for clock in ("cpu", "wall"):  # the engine alone: both clocks, every figure the limits come from
        for key in ("step1_s", "prefill1_s", "stepB_rows_s", "stepB_merged_s", "prefillB_rows_s", "lone_request_s",
                    "wave_s", "throughput_limit", "p50_limit", "throughput_limit_merged"):
            assert serving["engine"][clock][key] > 0, (clock, key)
    assert serving["engine"]["batch"] == serving["requests"] == 4 and serving["engine"]["waves"] == 1
    for key in ("throughput_overhead", "p50_overhead", "server_cpu_over_engine"):
        assert key in serving, key
    assert p.returncode == 0
