"""`t2 serve`: an OpenAI-compatible HTTP server over a self-adaptive model (docs/serving.md).

The request's `model` picks the weights: "auto" (pass 1 with --strategy chooses an expert per request),
"base", or an expert by name. Concurrent requests are batched, mixed experts included. Ctrl-C / SIGTERM drains.
"""

from __future__ import annotations

import os

from .common import add_data_dir_arg, add_model_arg, quiet, stderr
from .run import add_strategy_args, build_model


def register(sub) -> None:
    from ..serving.config import ServeConfig

    d = ServeConfig()
    p = sub.add_parser("serve", help="OpenAI-compatible server: /v1/chat/completions, /v1/completions, /v1/models")
    add_model_arg(p)
    add_strategy_args(p)
    p.add_argument("--allow-transfer", action="store_true",
                   help="use experts trained on another model whose matrix shapes match")
    add_data_dir_arg(p)
    p.add_argument("--host", default=d.host, help=f"interface to listen on (default {d.host}: this machine only)")
    p.add_argument("--port", type=int, default=d.port, help=f"TCP port (default {d.port})")
    p.add_argument("--max-batch-size", dest="batch_size", type=int, default=d.max_batch_size,
                   help=f"most requests decoded together (default {d.max_batch_size})")
    p.add_argument("--batch-wait-ms", type=float, default=d.batch_wait_ms,
                   help=f"after a request arrives, wait this long for others to batch with it "
                        f"(default {d.batch_wait_ms:g})")
    p.add_argument("--max-queue", type=int, default=d.max_queue,
                   help=f"requests admitted at once, queued or generating; more get 429 (default {d.max_queue})")
    p.add_argument("--max-prompt-tokens", type=int, default=d.max_prompt_tokens,
                   help=f"longest prompt accepted (default {d.max_prompt_tokens})")
    p.add_argument("--max-tokens", type=int, default=d.max_tokens,
                   help=f"largest max_tokens a request may ask for (default {d.max_tokens})")
    p.add_argument("--default-max-tokens", type=int, default=None,
                   help="max_tokens of requests that give none (default: 256, or --max-tokens if lower)")
    p.add_argument("--drain-timeout", type=float, default=d.drain_timeout,
                   help=f"on Ctrl-C/SIGTERM, seconds admitted requests may take to finish (default {d.drain_timeout:g})")
    p.add_argument("--no-merge-uniform", dest="merge_uniform", action="store_false",
                   help="always use per-row z, even when a whole batch uses one expert (slower; for debugging)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on every /v1 request (the openai client's api_key), "
                        "as vLLM's --api-key; default: $T2_API_KEY, else no key. /health stays open")
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
    config = ServeConfig(host=args.host, port=args.port, max_batch_size=args.batch_size,
                         batch_wait_ms=args.batch_wait_ms, max_queue=args.max_queue,
                         max_prompt_tokens=args.max_prompt_tokens, max_tokens=args.max_tokens,
                         default_max_tokens=args.default_max_tokens, drain_timeout=args.drain_timeout,
                         merge_uniform=args.merge_uniform,
                         api_key=args.api_key if args.api_key is not None else os.environ.get("T2_API_KEY") or None)
    quiet()
    sam = build_model(args, progress=True)
    scheduler = Scheduler(sam, config)
    stderr(f"t2 serve: models {', '.join(scheduler.model_ids)} (auto: {args.strategy} strategy) on "
           f"http://{config.host}:{config.port}/v1" + (" (API key required)" if config.api_key else ""))
    serve(scheduler, config, log_level=args.log_level)
    return 0
