"""`t2 adapt`: one-off adaptation work for an expert set.

    t2 adapt --task math500 --experts DIR --out E [--shots 10 ...]   few-shot α by CEM, saved as an expert
    t2 adapt --router --experts DIR [--per-domain 64 --layer auto]   fit the router, saved as DIR/router.*

The few-shot expert records its shot ids: `t2 eval --task T --expert E` (or `--experts DIR --strategy fewshot
--adapted E`) evaluates on the rest of the split. An interrupted search continues with `--resume` (the CEM
state is checkpointed to E.cem.json after every iteration).
"""

from __future__ import annotations

from pathlib import Path

from .common import add_config_args, add_data_dir_arg, add_model_arg, config_from_args, print_json, quiet, stderr


def register(sub) -> None:
    p = sub.add_parser("adapt", help="few-shot α search (CEM) for a task, or fit the prefill router")
    add_model_arg(p)
    p.add_argument("--experts", required=True, help="expert set directory (DIR/<name>/expert.json per domain)")
    p.add_argument("--allow-transfer", action="store_true",
                   help="use experts trained on another model whose matrix shapes match")
    add_data_dir_arg(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--cache-mb", type=int, default=2048, help="memory for merged expert weights (default 2048)")

    from ..adaptation.config import CEMConfig, FewShotConfig, RouterConfig

    g = p.add_argument_group("few-shot (CEM)")
    g.add_argument("--task", default=None, help="task to adapt to (gsm8k, math500, ..., custom:<file.jsonl>)")
    g.add_argument("--out", default=None, help="expert directory to write")
    add_config_args(g, FewShotConfig)  # --shots, --split, --seed (the shots and the search), ...
    add_config_args(g, CEMConfig, exclude=("seed",))  # --population, --iterations, --per-layer, ...
    g.add_argument("--batch-size", type=int, default=16, help="prompts generated (or embedded) together (default: 16)")
    g.add_argument("--resume", action="store_true", help="continue the search checkpointed in OUT.cem.json")

    g = p.add_argument_group("router")
    g.add_argument("--router", action="store_true", help="fit the router instead (base model hidden states)")
    add_config_args(g, RouterConfig, exclude=("seed", "batch_size"), flags={"max_tokens": "--router-max-tokens"})
    p.set_defaults(func=run)


def _runtime(args):
    from ..adaptation.expert_set import ExpertSet, scan, task_entries
    from ..adaptation.runtime import Runtime
    from ..adapted import AdaptedModel
    from ..errors import T2Error
    from ..experts import Expert

    entries = task_entries(scan(args.experts))
    if not entries:
        raise T2Error(f"{args.experts}: no domain experts (expected DIR/<name>/expert.json)")
    am = AdaptedModel.prepare(args.model, targets=entries[0].meta.get("targets", "mlp"),
                              expert=Expert.load(entries[0].path), allow_transfer=args.allow_transfer,
                              progress=not args.json)
    experts = ExpertSet.load(args.experts, am, allow_transfer=args.allow_transfer)
    return Runtime.build(am, experts, batch_size=getattr(args, "batch_size", 16), cache_bytes=args.cache_mb << 20)


def run(args) -> int:
    from ..errors import T2Error

    quiet()
    if args.router == bool(args.task):
        raise T2Error("give either --task T --out E (few-shot α) or --router (fit the router)")
    return run_router(args) if args.router else run_fewshot(args)


def run_router(args) -> int:
    from ..adaptation.router import RouterConfig, load_or_fit

    config = config_from_args(RouterConfig, args, batch_size=args.batch_size, seed=args.seed)
    rt = _runtime(args)
    router = load_or_fit(rt, config, data_dir=args.data_dir, refit=True)
    report = {"domains": router.domains, "layer": router.layer, "threshold": router.threshold,
              **{k: router.meta.get(k) for k in ("holdout_accuracy", "layer_report", "n_per_domain", "fit_seconds")}}
    if args.json:
        print_json(report)
        return 0
    print(f"router for {', '.join(router.domains)}: layer {router.layer}, held-out accuracy "
          f"{report['holdout_accuracy']:.3f}, others below cosine {router.threshold:.3f}")
    for layer_index, r in report["layer_report"].items():
        print(f"  layer {layer_index:>3}: accuracy {r['accuracy']:.3f}  margin {r['margin']:.3f}")
    stderr(f"saved beside the experts in {args.experts} ({report['fit_seconds']:.1f} s)")
    return 0


def run_fewshot(args) -> int:
    from ..adaptation.config import CEMConfig, FewShotConfig
    from ..adaptation.fewshot import adapt_fewshot
    from ..errors import T2Error
    from ..fileio import check_writable_dir
    from ..paths import data_dir
    from ..tasks import get_task

    if not args.out:
        raise T2Error("--out is required with --task: the directory the adapted expert is written to")
    task = get_task(args.task)
    check_writable_dir(Path(args.out).parent, "--out")  # the expert and its CEM checkpoint go beside it
    # One --seed draws the shots and seeds the search, as before the options came from the configs.
    config = config_from_args(FewShotConfig, args, cem=config_from_args(CEMConfig, args, seed=args.seed))
    rt = _runtime(args)
    out = Path(args.out)
    checkpoint = out.with_name(out.name + ".cem.json")
    expert, result = adapt_fewshot(rt, task, config, data_dir=data_dir(args.data_dir), checkpoint=checkpoint,
                                   resume=args.resume, progress=not args.json, name=out.name)
    expert.save(out)
    info = expert.meta["fewshot"]
    report = {"out": str(out), "task": task.name, "alpha": expert.meta["alpha"], "experts": info["experts"],
              "fitness": info["fitness"], "iterations": result.iterations, "evaluations": result.evaluations,
              "stopped": result.stopped, "seconds": info["seconds"], "heldout": info["heldout"]}
    if args.json:
        print_json(report)
        return 0
    alpha = expert.meta["alpha"]
    shown = (", ".join(f"{n} {a:.3f}" for n, a in zip(info["experts"], alpha)) if not args.per_layer
             else "per matrix, mean " + ", ".join(f"{n} {sum(row) / len(row):.3f}"
                                                  for n, row in zip(info["experts"], alpha)))
    print(f"wrote {out}: α = {shown}")
    print(f"shots accuracy {info['fitness']['score']:.3f} after {result.iterations} iterations "
          f"({result.evaluations} evaluations, stopped: {result.stopped}, {info['seconds']:.1f} s)")
    print(f"evaluate on the {info['heldout']} held-out examples: t2 eval --task {task.name} --expert {out}")
    return 0
