"""How much of MBPP's failures is the model's own test code? Re-judge every failing reply with its module-level
statements removed (everything but imports, functions, classes and assignments: the `assert`s, prints and
`check_solution()` calls the model wrote after its function), and count the replies that then pass.

    python results/qwen/own_tests.py results/qwen/runs/mbpp-base/records.jsonl --split test --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import ast
import json

from transformer_squared.sandbox import SandboxLimits, run_checks
from transformer_squared.tasks.mbpp import MBPP

KEEP = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("records")
    ap.add_argument("--split", default="test")
    ap.add_argument("--data-dir", default="../shared/data")
    args = ap.parse_args()
    with open(args.records, encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    task = MBPP()
    examples = {ex.id: ex for ex in task.load(args.split, data_dir=args.data_dir)}
    stripped = []
    for r in records:
        if r["correct"]:
            continue
        try:
            tree = ast.parse(r["extracted"])
        except SyntaxError:
            continue
        kept = [node for node in tree.body if isinstance(node, KEEP)]
        if len(kept) < len(tree.body):
            tree.body = kept
            stripped.append((r["id"], ast.unparse(tree)))
    results = run_checks([task.check(examples[i], code) for i, code in stripped], limits=SandboxLimits(timeout=10.0),
                         workers=2)
    passing = [i for (i, _), res in zip(stripped, results) if res.passed]
    print(json.dumps({"records": len(records), "correct": sum(r["correct"] for r in records),
                      "failing_with_module_level_code": len(stripped), "pass_once_stripped": len(passing),
                      "ids": passing}))


if __name__ == "__main__":
    main()
