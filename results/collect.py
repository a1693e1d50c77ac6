"""Turn the runs of results/experiments.sh (runs/, gitignored) into results/*.json and results/*.md tables.

    .venv/bin/python results/collect.py [--runs runs] [--out results]

Only finished runs are read (runs/<name>/result.json); a missing run is listed as not run, never filled in. A run
whose directory is gone (runs/ is not committed, and each machine starts without it) keeps the row that an earlier
collect.py wrote into results/*.json from its result.json.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

from safetensors import safe_open

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from transformer_squared.fileio import atomic_write_json, atomic_write_text  # noqa: E402

# (run name, label) in table order
TRAINING = {
    "arc-easy": ["arc-easy-base", "arc-easy-svf-rl-cosine-s0", "arc-easy-svf-rl-s0", "arc-easy-svf-rl-s1", "arc-easy-svf-rl-s2",
                 "arc-easy-svf-rl-30-s0",
                 "arc-easy-svf-sft", "arc-easy-lora-rl", "arc-easy-lora-sft"],
    "arc-challenge": ["arc-challenge-base", "arc-challenge-svf-rl", "arc-challenge-svf-sft",
                      "arc-challenge-lora-rl", "arc-challenge-lora-sft"],
}
EXPERTS = {"reasoning": "arc-easy-svf-rl-s0", "math": "math-gsm8k-svf-sft", "code": "code-mbpp-svf-sft",
           "dispatch": "dispatch-svf-sft", "dispatch (RL, not shipped)": "dispatch-svf-rl"}
UNSEEN = ["arc-challenge", "humaneval", "math500"]
CONFIGS = ["base", "expert-reasoning", "expert-math", "expert-code", "prompt", "classifier", "router", "fewshot"]


def _json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def _pct(x) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def _ci(ci) -> str:
    return "" if not ci else f"{100 * ci[0]:.1f}–{100 * ci[1]:.1f}"


def _test_cells(row: dict) -> str:
    t = row.get("test") or {}
    return f"{t.get('n', '')} | {_pct(t.get('accuracy'))} | {_ci(t.get('ci95'))}"


def trainable_parameters(run: Path) -> int | None:
    meta = _json(run / "expert" / "expert.json")
    if meta and "num_parameters" in meta:
        return int(meta["num_parameters"])
    adapter = run / "expert" / "adapter_model.safetensors"
    if adapter.is_file():
        with safe_open(str(adapter), "pt") as f:
            return sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())
    return None


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


# rows written by an earlier collect.py (results/*.json), by run name, for runs whose directory is gone: training
# runs and the unseen-task grid apart (both have an arc-challenge-base row, of different shapes)
EARLIER: dict[str, dict] = {}
EARLIER_UNSEEN: dict[str, dict] = {}


def load_earlier(out: Path) -> None:
    training = _json(out / "training.json") or {}
    adaptation = _json(out / "adaptation.json") or {}
    for rows in training.values():
        EARLIER.update({r["run"]: r for r in rows if r.get("done")})
    for task, configs in (adaptation.get("unseen") or {}).items():
        EARLIER_UNSEEN.update({f"{task}-{c}": r for c, r in configs.items()})
    for r in (adaptation.get("experts") or {}).values():
        if r.get("done"):
            EARLIER.setdefault(r["run"], r)


def training_row(runs: Path, name: str) -> dict:
    run = runs / name
    result = _json(run / "result.json")
    row = {"run": name, "done": result is not None}
    if result is None:
        return EARLIER.get(name, row)
    if name.endswith("-base"):  # a `t2 eval` of the base model
        row.update(method="base", objective="", seed=None, parameters=0, steps=0, seconds_per_step=None,
                   total_seconds=result["seconds"], best_step=None,
                   test={k: result[k] for k in ("n", "correct", "accuracy", "ci95")},
                   command=_eval_command(result["config"]))
        return row
    cfg = (_json(run / "expert" / "expert.json") or _json(run / "expert" / "t2-lora.json") or {})
    cfg = cfg.get("training", {}).get("config", {})
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    step_s = [m["seconds"] for m in metrics]
    row.update(method=cfg.get("method"), objective=cfg.get("objective"), seed=cfg.get("seed"),
               parameters=trainable_parameters(run), steps=result["steps"],
               seconds_per_step=round(statistics.mean(step_s), 2) if step_s else None,
               total_seconds=round(result["seconds"], 1), best_step=result["best_step"],
               valid=[{"step": v["step"], "accuracy": v["accuracy"], "n": v["n"]} for v in result["valid"]],
               train_accuracy=[round(m.get("accuracy", float("nan")), 4) for m in metrics if "accuracy" in m],
               test=result["test"], config=cfg)
    return row


def _eval_command(cfg: dict) -> str:
    parts = [f"t2 eval --task {cfg['task']}", f"--limit {cfg['limit']}" if cfg.get("limit") else "",
             f"--max-new-tokens {cfg['max_new_tokens']}"]
    return " ".join(p for p in parts if p)


def training_tables(runs: Path) -> tuple[dict, str]:
    data = {task: [training_row(runs, n) for n in names] for task, names in TRAINING.items()}
    lines = ["| run | method | objective | seed | trainable params | steps | best step | s/step | total s | "
             "test n | test accuracy | 95% CI |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    md = []
    for task, rows in data.items():
        md += [f"### {task}", "", *lines]
        for r in rows:
            if not r["done"]:
                md.append(f"| {r['run']} | not run | | | | | | | | | | |")
                continue
            md.append(f"| {r['run']} | {r['method']} | {r['objective']} | {'' if r['seed'] is None else r['seed']} | "
                      f"{r['parameters']:,} | {r['steps']} | {r['best_step'] or ''} | "
                      f"{'' if r['seconds_per_step'] is None else r['seconds_per_step']} | {r['total_seconds']:.0f} | "
                      f"{_test_cells(r)} |")
        seeds = [r["test"]["accuracy"] for r in rows if r["done"] and re.search(r"-svf-rl-s\d+$", r["run"])
                 and r.get("test")]  # the seeds of one recipe (not the cosine-schedule run)
        if len(seeds) > 1:
            md.append(f"\nSVF-RL over {len(seeds)} seeds: mean {_pct(statistics.mean(seeds))}, "
                      f"sd {100 * statistics.stdev(seeds):.1f} points.")
        md.append("")
    return data, "\n".join(md)


def adaptation_row(runs: Path, name: str) -> dict | None:
    """A `t2 eval` of the unseen-task grid: accuracy, dispatch and pass timing (None: not run)."""
    result = _json(runs / name / "result.json")
    if result is None:
        return EARLIER_UNSEEN.get(name)
    ad = result.get("adaptation") or {}
    row = {k: result.get(k) for k in ("n", "correct", "accuracy", "ci95", "seconds")}
    dispatch = {k: ad[k] for k in ("dispatch_accuracy", "confusion", "experts_used") if k in ad}
    row.update(dispatch=dispatch or None, timing=ad.get("timing") or None)
    adapt = _json(runs / f"{name.removesuffix('-fewshot')}-fewshot-adapt.json") if name.endswith("-fewshot") else None
    if adapt:  # the CEM search, done once per task before pass 2 (t2 adapt)
        row["cem"] = {k: adapt.get(k) for k in ("alpha", "experts", "fitness", "iterations", "evaluations", "seconds")}
    return row


def adaptation_tables(runs: Path) -> tuple[dict, str]:
    data: dict[str, dict] = {}
    md = ["| task | configuration | n | accuracy | 95% CI | dispatch accuracy | pass-1 share | pass 1 s | pass 2 s |",
          "|---|---|---|---|---|---|---|---|---|"]
    for task in UNSEEN:
        data[task] = {}
        for c in CONFIGS:
            row = adaptation_row(runs, f"{task}-{c}")
            if row is None:
                md.append(f"| {task} | {c} | not run | | | | | | |")
                continue
            data[task][c] = row
            dispatch, timing = row.get("dispatch") or {}, row.get("timing") or {}
            md.append(f"| {task} | {c} | {row['n']} | {_pct(row['accuracy'])} | {_ci(row['ci95'])} | "
                      f"{_pct(dispatch.get('dispatch_accuracy'))} | {_pct(timing.get('pass1_fraction'))} | "
                      f"{timing.get('pass1_seconds', '')}{_cem_cell(row)} | {timing.get('pass2_seconds', '')} |")
    return data, "\n".join(md)


def _cem_cell(row: dict) -> str:
    cem = row.get("cem")
    return f" (+ CEM {cem['seconds']:.0f} s, once per task)" if cem and cem.get("seconds") is not None else ""


def experts_table(runs: Path) -> tuple[dict, str]:
    data = {}
    md = ["| expert | trained on | method | objective | steps | s/step | total s | test n | test accuracy | 95% CI |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for domain, name in EXPERTS.items():
        r = training_row(runs, name)
        data[domain] = r
        if not r["done"]:
            md.append(f"| {domain} | not trained | | | | | | | | |")
            continue
        md.append(f"| {domain} | {r['config'].get('task')} | {r['method']} | {r['objective']} | {r['steps']} | "
                  f"{r['seconds_per_step']} | {r['total_seconds']:.0f} | {_test_cells(r)} |")
    return data, "\n".join(md)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default=str(REPO / "runs"))
    ap.add_argument("--out", default=str(REPO / "results"))
    args = ap.parse_args(argv)
    runs, out = Path(args.runs), Path(args.out)
    load_earlier(out)
    training, training_md = training_tables(runs)
    adaptation, adaptation_md = adaptation_tables(runs)
    experts, experts_md = experts_table(runs)
    atomic_write_json(out / "training.json", training)
    atomic_write_json(out / "adaptation.json", {"unseen": adaptation, "experts": experts})
    atomic_write_text(out / "tables" / "training.md", training_md + "\n")
    atomic_write_text(out / "tables" / "adaptation.md", adaptation_md + "\n")
    atomic_write_text(out / "tables" / "experts.md", experts_md + "\n")
    print(training_md, adaptation_md, experts_md, sep="\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
