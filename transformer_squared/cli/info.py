"""`t2 info`: architecture, adapted matrices, SVF and LoRA trainable parameters."""

from __future__ import annotations

from .common import add_model_arg, add_targets_arg, print_json, quiet


def register(sub) -> None:
    p = sub.add_parser("info", help="architecture, adapted matrices and trainable parameter counts")
    add_model_arg(p)
    add_targets_arg(p)
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.add_argument("--list", action="store_true", help="also list every adapted matrix")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..info import model_info
    from ..models import load_model

    quiet()
    lm = load_model(args.model)
    info = {"model": args.model, **model_info(lm.model, args.targets)}
    if args.json:
        print_json(info)
        return 0
    print(f"model             {args.model} ({info['architecture']}, {info['model_type']}, {info['dtype']})")
    print(f"parameters        {info['parameters']:,}")
    print(f"layers            {info['layers']}  hidden {info['hidden_size']}")
    shapes = ", ".join(f"{k} ×{v}" for k, v in info["matrix_shapes"].items())
    print(f"targets           {info['targets']}: {info['adapted_matrices']} matrices ({shapes})")
    print(f"svf_parameters    {info['svf_parameters']:,}")
    print(f"lora r={info['lora_rank']} on q,v   {info['lora_qv_parameters']:,}")
    print(f"lora r={info['lora_rank']} on targets {info['lora_same_targets_parameters']:,}")
    if args.list:
        for n in info["matrices"]:
            print(f"  {n}")
    return 0
