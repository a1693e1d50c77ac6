"""Scoring saved model outputs (`t2 score`): predictions JSONL in, accuracy summary and per-sample records out.

A predictions file has one `{"id": ..., "output": ...}` per line, `output` being the raw model text. Any subset of
the split may be scored; every id must belong to it, once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterable

from ..errors import T2Error
from ..fileio import atomic_write_text
from ..metrics import accuracy_summary
from . import get_task
from ._data import read_jsonl
from .base import Task


def read_predictions(path: str | Path) -> list[dict]:
    """Rows of a predictions file, each checked to have a string/int `id` and a string `output`."""
    path = Path(path)
    if not path.is_file():
        raise T2Error(f"{path}: no such predictions file")
    rows = [_check_prediction(row, f"{path}:{row['_line']}") for row in read_jsonl(path, "predictions file")]
    if not rows:
        raise T2Error(f"{path}: no predictions in the file; write one {{\"id\", \"output\"}} object per line")
    return rows


def _check_prediction(row, at: str) -> dict:
    if not isinstance(row, dict):
        raise T2Error(f"{at}: expected a JSON object with 'id' and 'output'")
    if "id" not in row or isinstance(row["id"], bool) or not isinstance(row["id"], (str, int)):
        raise T2Error(f"{at}: missing or invalid 'id' (a string)")
    if not isinstance(row.get("output"), str):
        raise T2Error(f"{at}: missing or invalid 'output' (the raw model text, a string)")
    return {"id": str(row["id"]), "output": row["output"], "_at": at}


def score_predictions(task: Task | str, split: str | None, predictions: str | Path | Iterable[dict],
                      data_dir: str | Path | None = None, workers: int = 2) -> tuple[dict, list[dict]]:
    """Score `predictions` (a JSONL path or rows) against `task`'s `split`.

    Returns (summary, records): summary has task, split, n, correct, accuracy, ci95 (Wilson), seconds, n_split;
    records are {id, output, extracted, correct, detail} in the predictions' order.
    """
    start = time.perf_counter()
    if isinstance(task, str):
        task = get_task(task)
    split = split or task.default_split
    if isinstance(predictions, (str, Path)):
        rows = read_predictions(predictions)
    else:
        rows = [_check_prediction(r, f"prediction {i + 1}") for i, r in enumerate(predictions)]
        if not rows:
            raise T2Error("no predictions to score")  # an accuracy over nothing would read as 0.0
    examples = {ex.id: ex for ex in task.load(split, data_dir)}
    seen: dict[str, str] = {}
    for row in rows:
        if row["id"] not in examples:
            raise T2Error(f"{row['_at']}: id {row['id']!r} is not in {task.name} split {split!r}")
        if row["id"] in seen:
            raise T2Error(f"{row['_at']}: duplicate id {row['id']!r} (first at {seen[row['id']]})")
        seen[row["id"]] = row["_at"]
    verdicts = task.score_many([examples[r["id"]] for r in rows], [r["output"] for r in rows], workers=workers)
    records = [{"id": r["id"], "output": r["output"], "extracted": v.extracted, "correct": v.correct,
                "detail": v.detail} for r, v in zip(rows, verdicts)]
    summary = {"task": task.name, "split": split, **accuracy_summary([v.correct for v in verdicts]),
               "n_split": len(examples), "seconds": round(time.perf_counter() - start, 3)}
    return summary, records


def write_records(path: str | Path, records: list[dict]) -> None:
    """Per-sample records as JSONL, written atomically."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
