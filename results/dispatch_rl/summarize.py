"""Tables of the dispatch RL runs committed under results/dispatch_rl/runs/<name>/ (metrics.jsonl, result.json).

    .venv/bin/python results/dispatch_rl/summarize.py            # one line per run, then each run's steps
    .venv/bin/python results/dispatch_rl/summarize.py NAME...    # only these runs

Per run: its recipe (the options that differ between runs), validation accuracy at each validated step, the
selected step and its test score. Per step: mean reward, samples right, `mixed`, `distinct` (different labels
among a prompt's G samples), the label shares of the rollouts (c/m/r/o = code/math/reasoning/others), z drift.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent / "runs"
RECIPE = ("samples_per_prompt", "batch_size", "temperature", "lr", "schedule", "baseline", "advantage_norm",
          "kl_coef", "parametrization", "steps", "max_new_tokens")


def load(run: Path) -> tuple[dict, list[dict]]:
    result = json.loads((run / "result.json").read_text()) if (run / "result.json").exists() else {}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return result, rows


def main() -> None:
    runs = [HERE / n for n in sys.argv[1:]] or sorted(p for p in HERE.iterdir() if (p / "metrics.jsonl").exists())
    for run in runs:
        result, rows = load(run)
        cfg = json.loads((run / "config.json").read_text())
        recipe = " ".join(f"{k}={cfg.get(k)}" for k in RECIPE)
        valid = " ".join(f"{v['step']}:{v['accuracy']:.3f}" for v in result.get("valid", []))
        test = result.get("test") or {}
        print(f"## {run.name}\n{recipe}\nvalid (n={result.get('valid', [{}])[0].get('n', '?')}): {valid}; "
              f"best step {result.get('best_step')}; test {test.get('correct')}/{test.get('n')}")
        print("step  reward  right  mixed  distinct  c/m/r/o shares        z_drift  valid")
        for r in rows:
            a = r.get("answers", {})
            shares = "/".join(f"{a.get(k, 0):.2f}" for k in ("code", "math", "reasoning", "others"))
            print(f"{r['step']:4d}  {r.get('reward', float('nan')):+.2f}  {r.get('accuracy', float('nan')):5.2f}  "
                  f"{r.get('mixed', float('nan')):5.2f}  {r.get('distinct', float('nan')):8.2f}  {shares:22s}"
                  f"{r.get('z_drift', 0):.4f}  {r.get('valid_accuracy', '')}")
        print()


if __name__ == "__main__":
    main()
