"""Why RL on the dispatch task is hard for SmolLM2-135M: the exact first-label-token distribution, per domain.

    .venv/bin/python results/dispatch_rl/label_probe.py [--per-domain 10] [--expert experts/dispatch] [--json OUT]

For held-out (valid) dispatch prompts, one forward pass over prompt + the "Classification: \\boxed{" prefill
gives π(first reply token). The label is decided by that token ("math", "code", "reason"(ing), "others"), so
this is the exact probability that a T = 1 rollout names each label, without sampling. From it follow what RL
sees: the greedy label (the paper's greedy rollouts), the expected reward at T = 1, and the share of prompts
whose G samples would get mixed rewards (the only ones the leave-one-out baseline learns from):
P(mixed) = 1 − p^G − (1 − p)^G for p = π(correct label). `--expert` adds the same for an expert merged in.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter

import torch


def probe(lm, task, examples, label_ids: dict[str, int]) -> dict:
    from transformer_squared.tasks import prompt_ids

    per_domain: dict[str, list] = {}
    for ex in examples:
        ids = torch.tensor([prompt_ids(task, lm.tokenizer, ex)])
        with torch.no_grad():
            p = torch.softmax(lm.model(input_ids=ids, logits_to_keep=1).logits[0, -1].float(), -1)  # (V,)
        probs = {d: float(p[i]) for d, i in label_ids.items()}
        top = lm.tokenizer.convert_ids_to_tokens(int(p.argmax()))
        per_domain.setdefault(ex.answer, []).append({"p": probs, "argmax": top})
    out = {}
    for d, rows in sorted(per_domain.items()):
        pc = [r["p"][d] for r in rows]
        out[d] = {
            "n": len(rows),
            "mean_p_correct": sum(pc) / len(pc),
            "mean_p_label": {k: sum(r["p"][k] for r in rows) / len(rows) for k in label_ids},
            "argmax_tokens": dict(Counter(r["argmax"] for r in rows).most_common()),
            "greedy_correct": sum(r["argmax"] == lm.tokenizer.convert_ids_to_tokens(label_ids[d]) for r in rows),
            "p_mixed_G4": sum(1 - p ** 4 - (1 - p) ** 4 for p in pc) / len(pc),
            "p_mixed_G8": sum(1 - p ** 8 - (1 - p) ** 8 for p in pc) / len(pc),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-domain", type=int, default=10)
    ap.add_argument("--expert", default=None, help="also probe with this expert merged (e.g. experts/dispatch)")
    ap.add_argument("--json", default=None, help="write the numbers here")
    args = ap.parse_args()

    from transformer_squared.adapted import AdaptedModel
    from transformer_squared.evaluation import select_examples
    from transformer_squared.adaptation.dispatch import dispatch_task

    data = os.environ.get("T2_DATA_DIR", "../shared/data")
    task = dispatch_task("experts")
    valid = task.load("valid", data)
    examples = []
    for d in task.domains:
        examples += select_examples([e for e in valid if e.answer == d], args.per_domain, 0)
    am = AdaptedModel.prepare("smollm2-135m-instruct", targets="mlp")
    tok = am.tokenizer
    label_ids = {d: tok(d if d != "reasoning" else "reason", add_special_tokens=False)["input_ids"][0]
                 for d in list(task.domains) + ["others"]}
    result = {"label_first_tokens": {d: tok.convert_ids_to_tokens(i) for d, i in label_ids.items()},
              "base": probe(am.lm, task, examples, label_ids)}
    if args.expert:
        with am.using(am.load_expert(args.expert)):
            result[args.expert] = probe(am.lm, task, examples, label_ids)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        from transformer_squared.fileio import atomic_write_text

        atomic_write_text(args.json, text + "\n")


if __name__ == "__main__":
    main()
