"""`t2 eval`: accuracy of a model (optionally with an expert) on a benchmark, with a 95% CI."""

from __future__ import annotations

from .common import add_data_dir_arg, add_model_arg, print_json, quiet, stderr
from .run import add_strategy_args


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a model or an expert on a task")
    add_model_arg(p)
    p.add_argument("--task", required=True, help="gsm8k, math, math500, arc-easy, arc-challenge, mbpp, "
                                                 "mbpp-sanitized, humaneval, or custom:<file.jsonl>")
    p.add_argument("--split", default=None, help="default: the task's test split")
    p.add_argument("--limit", type=int, default=None, help="a seeded random subset of N examples")
    p.add_argument("--expert", default=None, help="expert directory (default: the base model)")
    p.add_argument("--allow-transfer", action="store_true",
                   help="apply an expert trained on another model whose matrix shapes match")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's own budget")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="subset and sampling seed")
    p.add_argument("--workers", type=int, default=2, help="parallel sandboxes for code tasks")
    p.add_argument("--out", default=None, help="directory for records.jsonl, summary.json, config.json")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    add_data_dir_arg(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    g = p.add_argument_group("self-adaptation (two passes; a few-shot --expert is evaluated on its held-out rest)")
    add_strategy_args(g, required=False)
    g.add_argument("--shuffle-expert-seed", type=int, default=None,
                   help="transfer control: permute each matrix's z entries (of --expert, or of every expert)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..evaluation import EvalConfig, evaluate
    from ..metrics import format_accuracy
    from ..models import load_model
    from ..paths import data_dir
    from ..tasks import get_task

    quiet()
    config = EvalConfig(task=args.task, split=args.split, limit=args.limit, seed=args.seed,
                        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                        temperature=args.temperature, top_p=args.top_p, workers=args.workers)
    task = get_task(args.task)  # fail fast on a bad task name, before loading the model
    if args.out:
        from ..fileio import check_writable_dir

        check_writable_dir(args.out, "--out")  # likewise a --out that cannot be written
    if args.experts:
        from ..errors import T2Error
        from .run import run_eval_adaptive

        if args.expert:
            raise T2Error("give --expert E (one expert) or --experts DIR (self-adaptation), not both")

        return run_eval_adaptive(args, config, task)
    lm = load_model(args.model)
    extra = {"model": args.model, "expert": args.expert}
    if args.expert:
        from ..adapted import AdaptedModel

        am, expert = AdaptedModel.for_expert(lm, args.expert, allow_transfer=args.allow_transfer,
                                             progress=not args.json)
        if args.shuffle_expert_seed is not None:
            from ..adaptation.transfer import shuffle_expert

            expert = shuffle_expert(expert, args.shuffle_expert_seed)
            extra["shuffle_expert_seed"] = args.shuffle_expert_seed
        am.apply(expert)
        extra["expert_name"] = expert.name
        from ..adaptation.fewshot import heldout_task

        held = heldout_task(task, expert)  # a few-shot expert is scored without the shots it was adapted on
        if held is not task:
            extra["excluded_shot_ids"] = sorted(held.exclude)
        task = held
    summary, _ = evaluate(lm.model, lm.tokenizer, config, task=task, data_dir=data_dir(args.data_dir),
                          out_dir=args.out, resume=args.resume, progress=not args.json, extra=extra)
    if args.json:
        print_json(summary)
    else:
        who = f"{args.model}" + (f" + expert {extra['expert_name']}" if args.expert else "")
        print(f"{summary['task']} [{summary['split']}] {who}: {format_accuracy(summary)}")
        print(f"{summary['seconds']:.1f} s (generation {summary['generation_seconds']:.1f} s, "
              f"{summary['tokens_per_second']} tokens/s; scoring {summary['scoring_seconds']:.1f} s)")
        if args.out:
            stderr(f"records: {args.out}/records.jsonl")
    return 0
