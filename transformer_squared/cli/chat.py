"""`t2 chat`: talk to a self-adaptive model; every turn picks its expert afresh (two passes per turn).

Reads one user message per line from standard input (a terminal or a pipe) and prints `[expert] answer`.
`/reset` starts a new conversation, `/quit` (or end of input) leaves. Pass 1 classifies the latest user
message; pass 2 answers the whole conversation with the chosen expert.
"""

from __future__ import annotations

import sys

from .run import add_run_args, build_model, sampling
from .common import quiet


def register(sub) -> None:
    p = sub.add_parser("chat", help="interactive chat with a self-adaptive model (reads lines from stdin)")
    add_run_args(p)
    p.add_argument("--system", default=None, help="optional system message")
    p.add_argument("--show-timing", action="store_true", help="print pass-1 / pass-2 seconds after each answer")
    p.set_defaults(func=run)


def run(args) -> int:
    quiet()
    tty = sys.stdin.isatty()
    sam = build_model(args, progress=tty)
    params = sampling(args)
    start = [{"role": "system", "content": args.system}] if args.system else []
    history = list(start)
    if tty:
        print("t2 chat: one message per line; /reset for a new conversation, /quit to leave", file=sys.stderr)
    while True:
        if tty:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            break
        if text == "/reset":
            history = list(start)
            print("(new conversation)", flush=True)
            continue
        history.append({"role": "user", "content": text})
        r = sam.generate([history], params)[0]
        answer = r.answer.strip()
        history.append({"role": "assistant", "content": answer})
        print(f"[{r.expert}] {answer}", flush=True)
        if args.show_timing:
            print(f"  (pass 1 {r.pass1_seconds:.2f} s, pass 2 {r.pass2_seconds:.2f} s)", flush=True)
    return 0
