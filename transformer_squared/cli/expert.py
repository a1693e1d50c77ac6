"""`t2 expert init | show | mix | export | convert`: make, inspect, combine, export and convert expert files."""

from __future__ import annotations

from pathlib import Path

from ..errors import T2Error
from .common import add_model_arg, add_targets_arg, print_json, quiet


def register(sub) -> None:
    p = sub.add_parser("expert", help="create, inspect and mix SVF experts")
    esub = p.add_subparsers(dest="expert_command", metavar="ACTION", required=True)

    q = esub.add_parser("init", help="an identity expert (z = 1), or a perturbed one with --noise")
    add_model_arg(q)
    add_targets_arg(q)
    q.add_argument("--out", required=True, help="expert directory to write")
    q.add_argument("--noise", type=float, default=0.0, help="z = 1 + NOISE·N(0,1) (default 0: identity)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--name", default=None, help="expert name (default: the directory name)")
    q.add_argument("--domain", default=None, help="domain it serves (math, code, reasoning, ...)")
    q.set_defaults(func=run_init)

    q = esub.add_parser("show", help="summary of an expert, and a PNG of |z-1| per layer and matrix")
    q.add_argument("expert", help="expert directory")
    q.add_argument("--png", default=None, help="where to write the plot (default: EXPERT/z.png; 'none' to skip)")
    q.add_argument("--json", action="store_true", help="one JSON object")
    q.set_defaults(func=run_show)

    q = esub.add_parser("mix", help="z' = Σ α_k z_k over experts")
    q.add_argument("experts", nargs="+", help="expert directories")
    q.add_argument("--alpha", required=True, help="comma-separated weights, one per expert")
    q.add_argument("--out", required=True, help="expert directory to write")
    q.add_argument("--name", default=None)
    q.set_defaults(func=run_mix)

    q = esub.add_parser("export", help="write an expert as a PEFT LoRA adapter or a merged Hugging Face model")
    q.add_argument("expert", help="expert directory")
    q.add_argument("--format", required=True, choices=("lora", "merged"),
                   help="lora: PEFT/vLLM adapter of the best rank-K approximation of ΔW; merged: full model with W'")
    q.add_argument("--rank", type=int, default=None, help="lora: the same rank K for every matrix")
    q.add_argument("--max-error", type=float, default=None,
                   help="lora: per matrix the smallest rank with relative Frobenius error ≤ EPS")
    q.add_argument("--relative-to", choices=("delta", "weight"), default="delta",
                   help="what --max-error is relative to: ‖ΔW‖ (default) or ‖W‖")
    q.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="lora: dtype of the adapter tensors (default float32)")
    q.add_argument("--out", required=True, help="directory to write")
    q.add_argument("--model", default=None,
                   help="alias, .gguf file, local HF directory or hub id (default: the expert's base model)")
    q.add_argument("--allow-transfer", action="store_true",
                   help="export for a model other than the one the expert was trained on (same shapes)")
    q.add_argument("--json", action="store_true", help="print the report as one JSON object")
    q.set_defaults(func=run_export)

    q = esub.add_parser("convert", help="an expert as a PEFT SVF adapter directory, or such an adapter as an expert")
    q.add_argument("source", help="expert directory (--to peft) or PEFT SVF adapter directory (--to t2)")
    q.add_argument("--to", required=True, choices=("peft", "t2"), help="the format to write")
    q.add_argument("--out", required=True, help="directory to write")
    q.add_argument("--model", default=None,
                   help="--to t2 of a reference-parametrized adapter: the base model (default: the adapter's)")
    q.set_defaults(func=run_convert)


def run_init(args) -> int:
    from ..adapted import base_meta
    from ..experts import Expert
    from ..models import load_model

    quiet()
    meta = base_meta(load_model(args.model), args.targets)
    name = args.name or Path(args.out).name
    extra = {"name": name, "domain": args.domain, "task": None}
    if args.noise:
        expert = Expert.random(meta["shapes"], args.noise, args.seed, {**meta, **extra})
    else:
        expert = Expert.identity(meta["shapes"], {**meta, **extra})
    expert.save(args.out)
    print(f"wrote {args.out}: {len(expert.z)} matrices, {expert.num_parameters:,} parameters"
          + (f", z = 1 + {args.noise}·N(0,1)" if args.noise else " (identity)"))
    return 0


def run_show(args) -> int:
    from ..experts import Expert

    expert = Expert.load(args.expert)
    stats = expert.stats()
    png = None if (args.png or "").lower() == "none" else Path(args.png or Path(args.expert) / "z.png")
    if png is not None:
        from ..plots import plot_expert

        plot_expert(expert.z, png, title=f"{expert.name}: mean |z − 1|")
    meta = expert.meta
    base = meta.get("base_model") or {}
    summary = {
        "expert": str(args.expert), "name": expert.name, "domain": expert.domain, "task": meta.get("task"),
        "base_model": base.get("name"), "fingerprint": base.get("fingerprint"), "targets": meta.get("targets"),
        "parametrization": (meta.get("training") or {}).get("parametrization", meta.get("parametrization")),
        **stats, "metrics": meta.get("metrics"), "png": str(png) if png else None,
    }
    if args.json:
        print_json(summary)
        return 0
    print(f"expert        {summary['name']} ({args.expert})")
    print(f"base model    {summary['base_model']} (weights {str(summary['fingerprint'])[:12]})")
    print(f"targets       {summary['targets']}: {stats['matrices']} matrices, {stats['parameters']:,} parameters")
    print(f"domain/task   {summary['domain']} / {summary['task']}")
    print(f"z             mean {stats['z_mean']:.4f}  min {stats['z_min']:.4f}  max {stats['z_max']:.4f}  "
          f"mean|z-1| {stats['mean_abs_dev']:.4g}")
    if meta.get("metrics"):
        print(f"metrics       {meta['metrics']}")
    if "alpha" in meta:
        print(f"mixed from    {meta.get('mixed_from')} with alpha {meta['alpha']}")
    if png:
        print(f"plot          {png}")
    return 0


def run_mix(args) -> int:
    from ..experts import Expert, mix

    try:
        alpha = [float(a) for a in args.alpha.split(",")]
    except ValueError:
        raise T2Error(f"--alpha must be comma-separated numbers, got {args.alpha!r}") from None
    experts = [Expert.load(e) for e in args.experts]
    out = mix(experts, alpha, name=args.name or Path(args.out).name)
    out.save(args.out)
    print(f"wrote {args.out}: " + " + ".join(f"{a:g}·{e.name}" for a, e in zip(alpha, experts)))
    return 0


def run_export(args) -> int:
    import torch

    from ..experts import Expert
    from ..export import export_lora, export_merged, format_summary
    from ..models import DEFAULT_MODEL

    quiet()
    if args.format == "merged" and (args.rank is not None or args.max_error is not None):
        raise T2Error("--rank and --max-error apply to --format lora; a merged export is exact")
    if args.format == "lora" and (args.rank is None) == (args.max_error is None):
        raise T2Error("--format lora needs exactly one of --rank K or --max-error EPS")
    expert = Expert.load(args.expert)
    model = args.model or (expert.meta.get("base_model") or {}).get("name") or DEFAULT_MODEL
    if args.format == "merged":
        record = export_merged(model, args.expert, args.out, allow_transfer=args.allow_transfer, progress=True)
        if args.json:
            print_json(record)
        else:
            print(f"wrote {args.out}: {record['merged_matrices']} matrices merged into "
                  f"{record['base_model']['reference']} ({record['dtype']})")
        return 0
    report = export_lora(model, args.expert, args.out, rank=args.rank, max_error=args.max_error,
                         relative_to=args.relative_to, dtype=getattr(torch, args.dtype),
                         allow_transfer=args.allow_transfer, progress=True)
    if args.json:
        print_json({k: v for k, v in report.items() if k != "matrices"})
        return 0
    print(f"wrote {args.out}: {format_summary(report)}")
    vllm = report["vllm_max_lora_rank"]
    print(f"per-matrix ranks and errors in {Path(args.out) / 'export_report.json'}; largest rank {report['r']}: "
          + (f"serve with vLLM --max-lora-rank {vllm}" if vllm else
             f"above vLLM's --max-lora-rank limit of 512, export with --rank 512 or less for vLLM"))
    return 0


def run_convert(args) -> int:
    from ..peft import expert_to_peft, peft_to_expert

    quiet()
    if args.to == "peft":
        out = expert_to_peft(args.source, args.out)
        print(f"wrote {out}: PEFT SVF adapter (load with PeftModel.from_pretrained after "
              f"`import transformer_squared.peft`)")
        return 0
    expert = peft_to_expert(args.source, args.out, model=args.model)
    print(f"wrote {args.out}: {len(expert.z)} matrices, {expert.num_parameters:,} parameters")
    return 0
