"""`t2 serve`: an OpenAI-compatible HTTP server over a self-adaptive model (docs/serving.md).

The request's `model` picks the weights: "auto" (pass 1 with --strategy chooses an expert per request),
"base", or an expert by name. Concurrent requests are batched, mixed experts included. Ctrl-C / SIGTERM drains.
"""

from __future__ import annotations

import os

from .common import add_config_args, add_data_dir_arg, add_model_arg, config_from_args, quiet, stderr
from .run import add_strategy_args, build_model


def register(sub) -> None:
    from ..serving.config import ServeConfig

    p = sub.add_parser("serve", help="OpenAI-compatible server: /v1/chat/completions, /v1/completions, /v1/models")
    add_model_arg(p)
    add_strategy_args(p)
    p.add_argument("--allow-transfer", action="store_true",
                   help="use experts trained on another model whose matrix shapes match")
    add_data_dir_arg(p)
    # --host, --port, --max-batch-size, ..., --api-key: ServeConfig's fields (help from serving/config.py)
    add_config_args(p, ServeConfig)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice, one per core); on a machine shared with other "
                        "busy processes, 1 can be several times faster")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import T2Error
    from ..serving.app import require_deps, serve
    from ..serving.config import ServeConfig
    from ..serving.scheduler import Scheduler

    require_deps()  # before the (slow) model load
    if args.threads is not None:
        if args.threads < 1:
            raise T2Error(f"--threads must be at least 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    # --api-key falls back on $T2_API_KEY, as vLLM's
    api_key = args.api_key if args.api_key is not None else os.environ.get("T2_API_KEY") or None
    config = config_from_args(ServeConfig, args, api_key=api_key)
    args.batch_size = config.max_batch_size  # the engine's batch is the server's
    quiet()
    sam = build_model(args, progress=True)
    sam.rt.engine.set_precision(config.precision)
    scheduler = Scheduler(sam, config)
    engine = sam.rt.engine
    low = f"; {engine.compute_precision} products" if engine.compute_precision != "exact" else ""
    stderr(f"t2 serve: models {', '.join(scheduler.model_ids)} (auto: {args.strategy} strategy{low}) on "
           f"http://{config.host}:{config.port}/v1" + (" (API key required)" if config.api_key else ""))
    serve(scheduler, config, log_level=args.log_level)
    return 0
