"""`t2 eval`: accuracy of a model (optionally with an expert) on a benchmark, with a 95% CI."""

from __future__ import annotations

from .common import add_config_args, add_data_dir_arg, add_model_arg, config_from_args, print_json, quiet, stderr
from .run import add_strategy_args


def register(sub) -> None:
    from ..evaluation import EvalConfig

    p = sub.add_parser("eval", help="evaluate a model or an expert on a task")
    add_model_arg(p)
    add_config_args(p, EvalConfig)  # --task, --split, --limit, --seed, --batch-size, --max-new-tokens, ...
    p.add_argument("--expert", default=None, help="expert directory (default: the base model)")
    p.add_argument("--allow-transfer", action="store_true",
                   help="apply an expert trained on another model whose matrix shapes match")
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
    from ..evaluation import EvalConfig
    from ..metrics import format_accuracy
    from ..paths import data_dir
    from ..tasks import get_task

    quiet()
    config = config_from_args(EvalConfig, args)
    task = get_task(args.task)  # fail fast on a bad task name, before loading the model
    if args.out:
        from ..fileio import check_writable_dir

        check_writable_dir(args.out, "--out")  # likewise a --out that cannot be written
    if args.experts:
        from ..errors import T2Error
        from .run import run_eval_adaptive

        if args.expert:
            raise T2Error("give --expert E (one expert) or --experts DIR (self-adaptation), not both")
        if config.precision != "exact":
            raise T2Error("--precision applies to one model or one expert; the two-pass system (--experts) runs "
                          "exact for now: drop --precision")

        return run_eval_adaptive(args, config, task)
    run_args = dict(config=config, task=task, data_dir=data_dir(args.data_dir), out_dir=args.out,
                    resume=args.resume, progress=not args.json, extra={"model": args.model, "expert": args.expert})
    from ..training.lora import evaluate_lora, is_lora_expert

    if args.expert and is_lora_expert(args.expert):  # a LoRA baseline from `t2 train --method lora`
        summary, _ = evaluate_lora(args.model, args.expert, allow_transfer=args.allow_transfer, **run_args)
    elif args.expert:
        from ..adaptation.evaluate import evaluate_expert

        summary, _ = evaluate_expert(args.model, args.expert, allow_transfer=args.allow_transfer,
                                     shuffle_seed=args.shuffle_expert_seed, **run_args)
    else:
        from ..evaluation import evaluate
        from ..models import load_model

        lm = load_model(args.model)
        summary, _ = evaluate(lm.model, lm.tokenizer, **run_args)
    if args.json:
        print_json(summary)
    else:
        name = summary["config"].get("expert_name")
        who = f"{args.model}" + (f" + expert {name}" if args.expert else "")
        print(f"{summary['task']} [{summary['split']}] {who}: {format_accuracy(summary)}")
        print(f"{summary['seconds']:.1f} s (generation {summary['generation_seconds']:.1f} s, "
              f"{summary['tokens_per_second']} tokens/s; scoring {summary['scoring_seconds']:.1f} s)")
        if args.out:
            stderr(f"records: {args.out}/records.jsonl")
    return 0
