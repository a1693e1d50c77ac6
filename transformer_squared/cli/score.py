"""`t2 score`: score saved model outputs against a task split, with the same scorers as evaluation."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "score", help="score saved model outputs (JSONL of {id, output}) against a task",
        description="Score raw model outputs against a task split: answer extraction, normalisation and (for code "
                    "tasks) sandboxed test runs, exactly as `t2 eval` does.")
    p.add_argument("--task", required=True, help="task name (gsm8k, math, math500, arc-easy, arc-challenge, mbpp, "
                                                 "mbpp-sanitized, humaneval) or custom:<path.jsonl>")
    p.add_argument("--split", default=None, help="split to score against (default: the task's default, usually test)")
    p.add_argument("--predictions", required=True, help='JSONL file, one {"id": ..., "output": ...} per line')
    p.add_argument("--data-dir", default=None, help="benchmark data directory (default: $T2_DATA_DIR, else the hub)")
    p.add_argument("--out", default=None, help="write per-sample records (id, output, extracted, correct, detail) "
                                              "to this JSONL file")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a human summary")
    p.add_argument("--workers", type=int, default=2, help="parallel sandboxed test runs for code tasks (default 2)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import T2Error
    from ..metrics import format_accuracy
    from ..tasks.runner import score_predictions, write_records

    if args.workers < 1:
        raise T2Error("--workers must be at least 1")
    summary, records = score_predictions(args.task, args.split, args.predictions, data_dir=args.data_dir,
                                         workers=args.workers)
    if args.out:
        write_records(args.out, records)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['task']} [{summary['split']}]: {format_accuracy(summary)}")
        if summary["n"] < summary["n_split"]:
            print(f"  scored {summary['n']} of the split's {summary['n_split']} examples")
        print(f"  {summary['seconds']:.1f} s" + (f"; records in {args.out}" if args.out else ""))
    return 0
