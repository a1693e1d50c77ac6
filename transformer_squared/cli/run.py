"""`t2 run`: answer prompts with a self-adaptive model (two passes: choose an expert, then answer).

Also the arguments and builders that `t2 chat` and `t2 eval --experts` share with it.
"""

from __future__ import annotations

import argparse
import sys

from .common import add_data_dir_arg, add_model_arg, print_json, quiet


def add_strategy_args(p, *, required: bool = True) -> None:
    """--experts, --strategy and the pass-1 options (t2 run, t2 chat, t2 eval)."""
    from ..adaptation import STRATEGIES

    p.add_argument("--experts", required=required, default=None,
                   help="expert set: DIR/<name>/expert.json per domain, optional DIR/dispatch/ and DIR/router.*")
    p.add_argument("--strategy", default="prompt", choices=STRATEGIES,
                   help="pass 1: prompt (the model classifies), classifier (with the dispatch expert), "
                        "fewshot (α from t2 adapt, needs --adapted), router (nearest centroid on hidden states)")
    p.add_argument("--adapted", default=None, help="few-shot expert written by `t2 adapt --task` (strategy fewshot)")
    p.add_argument("--pass1-tokens", type=int, default=64, help="most tokens pass 1 may generate (default 64)")
    p.add_argument("--prefill", action=argparse.BooleanOptionalAction, default=None,
                   help="start pass 1's reply with 'Classification: \\boxed{' (default: on for classifier, whose "
                        "dispatch expert is trained so; off for prompt, the paper's setting; helps small models)")
    p.add_argument("--cache-mb", type=int, default=2048,
                   help="memory for merged expert weights, so switching back to an expert is a copy (default 2048)")


def add_run_args(p) -> None:
    """Model, transfer, batching and data options of t2 run / t2 chat."""
    add_model_arg(p)
    add_strategy_args(p)
    p.add_argument("--allow-transfer", action="store_true",
                   help="use experts trained on another model whose matrix shapes match")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    add_data_dir_arg(p)


def build_model(args, *, progress: bool, shuffle_seed: int | None = None):
    """The SelfAdaptiveModel the arguments describe."""
    from ..adaptation.model import SelfAdaptiveModel
    from ..adaptation.prompt import PromptConfig
    from ..errors import T2Error
    from ..paths import data_dir

    if args.cache_mb < 0:
        raise T2Error(f"--cache-mb must be >= 0, got {args.cache_mb}")
    return SelfAdaptiveModel.from_dir(
        args.experts, model=args.model, strategy=args.strategy, allow_transfer=args.allow_transfer,
        adapted=args.adapted, batch_size=args.batch_size, cache_bytes=args.cache_mb << 20,
        prompt_config=PromptConfig(max_new_tokens=args.pass1_tokens, prefill=args.prefill),
        data_dir=data_dir(args.data_dir), shuffle_seed=shuffle_seed, progress=progress)


def sampling(args):
    from ..generation import SamplingParams

    return SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                          seed=args.seed)


def register(sub) -> None:
    p = sub.add_parser("run", help="answer prompts with a self-adaptive model (expert chosen per prompt)")
    add_run_args(p)
    p.add_argument("--json", action="store_true",
                   help="one JSON object per prompt: prompt, expert, label, answer, pass1_seconds, pass2_seconds")
    p.add_argument("prompts", nargs="*", help="prompts (default: one per line of standard input)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import T2Error

    quiet()
    prompts = list(args.prompts) or [line.strip() for line in sys.stdin if line.strip()]
    if not prompts:
        raise T2Error("no prompts: pass them as arguments or one per line on standard input")
    sam = build_model(args, progress=not args.json)
    results = sam.generate(prompts, sampling(args))
    for prompt, r in zip(prompts, results):
        if args.json:
            print_json({"prompt": prompt, **r.to_json()})
            continue
        via = r.expert if r.expert == r.label or r.label == "others" else f"{r.expert}, {r.label}"
        print(f"[{via}] (pass 1 {r.pass1_seconds:.2f} s, pass 2 {r.pass2_seconds:.2f} s)")
        print(r.answer.strip())
        print()
    return 0


def run_eval_adaptive(args, config, task) -> int:
    """`t2 eval --experts DIR --strategy S`: the two-pass system on a task (called by cli/eval.py)."""
    from ..adaptation.evaluate import evaluate_adaptive
    from ..metrics import format_accuracy
    from ..paths import data_dir
    from .common import stderr

    sam = build_model(args, progress=not args.json, shuffle_seed=args.shuffle_expert_seed)
    extra = {"model": args.model, "adapted": args.adapted, "prefill": args.prefill, "pass1_tokens": args.pass1_tokens,
             "allow_transfer": args.allow_transfer, "shuffle_expert_seed": args.shuffle_expert_seed}
    summary, _, _ = evaluate_adaptive(sam, config, task=task, data_dir=data_dir(args.data_dir), out_dir=args.out,
                                      resume=args.resume, progress=not args.json, extra=extra)
    if args.json:
        print_json(summary)
        return 0
    a = summary["adaptation"]
    print(f"{summary['task']} [{summary['split']}] {args.model} + experts {args.experts} ({a['strategy']}): "
          f"{format_accuracy(summary)}")
    used = ", ".join(f"{k} {v}" for k, v in sorted(a["experts_used"].items()))
    acc = a["dispatch_accuracy"]
    print(f"dispatch: true label {a['true_label']}; chosen {used}" +
          (f"; dispatch accuracy {acc:.3f}" if acc is not None else ""))
    t = a["timing"]
    frac = f" ({100 * t['pass1_fraction']:.0f}% of the two passes)" if t["pass1_fraction"] is not None else ""
    print(f"pass 1 {t['pass1_seconds']:.1f} s{frac}, pass 2 {t['pass2_seconds']:.1f} s "
          f"(expert switches {t['switch_seconds']:.1f} s); scoring {summary['scoring_seconds']:.1f} s")
    if args.out:
        stderr(f"records: {args.out}/records.jsonl, dispatch: {args.out}/dispatch.jsonl")
    return 0
