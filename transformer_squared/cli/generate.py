"""`t2 generate`: answer one prompt with the base model or an expert (chat template applied, greedy)."""

from __future__ import annotations

import sys

from .common import add_model_arg, quiet


def register(sub) -> None:
    from ..evaluation import PRECISION_HELP, PRECISIONS

    p = sub.add_parser("generate", help="answer a prompt with the base model or an expert")
    add_model_arg(p)
    p.add_argument("--expert", default=None, help="expert directory (default: the base model)")
    p.add_argument("--allow-transfer", action="store_true",
                   help="apply an expert trained on another model whose matrix shapes match")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--system", default=None, help="optional system message")
    p.add_argument("--precision", default="exact", choices=PRECISIONS, help=f"{PRECISION_HELP} (default: exact)")
    p.add_argument("prompt", nargs="?", help="the prompt (default: read standard input)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import T2Error
    from ..generation import Engine, SamplingParams
    from ..models import load_model

    quiet()
    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    if not prompt.strip():
        raise T2Error("empty prompt: pass it as an argument or on standard input")
    lm = load_model(args.model)
    if args.expert:
        from ..adapted import AdaptedModel

        am, expert = AdaptedModel.for_expert(lm, args.expert, allow_transfer=args.allow_transfer, progress=True)
        am.apply(expert)
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + \
        [{"role": "user", "content": prompt}]
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                            top_p=args.top_p, seed=args.seed)
    engine = Engine(lm.model, lm.tokenizer, max_batch_size=1, precision=args.precision)
    out = engine.generate_chat([messages], params)[0]
    print(out.text.strip())
    return 0
