"""Evaluating the whole two-pass system on a task: accuracy with a 95% CI, dispatch confusion, pass timings.

Built on `evaluation.evaluate` (the same subsets, scoring, records and resume): pass 1 runs in its
`before_generate` hook for each chunk, pass 2 in an engine that answers each prompt with the chunk's choices.
With an output directory, `dispatch.jsonl` holds one row per example (true label, chosen label and expert,
amortised pass-1/pass-2 seconds) beside `records.jsonl`, and `summary.json` gains an `adaptation` block:

- `dispatch`: the confusion matrix true label -> chosen label, and dispatch accuracy. A task's true label is its
  `Task.domain` if an expert serves that domain, else `others` (for unseen tasks the right expert is the one
  of the same domain: MATH -> math, HumanEval -> code, ARC-Challenge -> reasoning, as in the paper's Table 3);
- `timing`: pass-1 and pass-2 seconds (pass 2 = expert switches + generation) over this run's chunks, and
  pass 1's fraction of their sum (the paper's "first pass / second pass" cost).

Few-shot experts are evaluated on the held-out remainder: their shot ids are excluded automatically.

`evaluate_expert` is `t2 eval --expert E` from Python: one expert merged into the model (optionally with its z
shuffled, the transfer control), few-shot shots held out, then `evaluation.evaluate`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from ..adapted import AdaptedModel
from ..evaluation import EvalConfig, evaluate
from ..fileio import append_jsonl, atomic_write_json, read_jsonl
from ..tasks import Task, get_task
from .fewshot import FewShotStrategy, heldout_task
from .transfer import shuffle_expert


class _PassTwo:
    """What `evaluate` calls to generate: pass 2 with the choices pass 1 made for this chunk.

    It is the engine of `evaluation.generate_and_score` (the one generate -> score path), so the two-pass system
    gets the prompts, decoding and scoring a single model gets from `t2 eval`; only which weights answer differs."""

    def __init__(self, sam, state: dict, record):
        self.sam, self.state, self.record = sam, state, record

    def generate(self, prompt_ids, params, **_):
        outs, seconds, totals = self.sam.answer(prompt_ids, self.state["choices"], params)
        self.state["pass2"] += totals["switch_seconds"] + totals["generate_seconds"]
        self.state["switch"] += totals["switch_seconds"]
        self.record(seconds)
        return outs


def evaluate_adaptive(sam, config, *, task, data_dir=None, out_dir=None, resume: bool = False,
                      progress: bool = True, extra: dict[str, Any] | None = None):
    """Evaluate SelfAdaptiveModel `sam` on `task` (EvalConfig `config`). Returns (summary, records, dispatch rows)."""
    extra = dict(extra or {})
    if isinstance(sam.strategy, FewShotStrategy):
        held = heldout_task(task, sam.strategy.expert)
        if held is not task:
            extra["excluded_shot_ids"] = sorted(held.exclude)
        task = held
    experts = sam.rt.experts
    true = experts.true_label(task.domain)
    rows_path = Path(out_dir) / "dispatch.jsonl" if out_dir else None
    rows: dict[str, dict] = {}
    if rows_path is not None:
        if resume and rows_path.is_file():
            rows = {r["id"]: r for r in read_jsonl(rows_path)}
        else:
            rows_path.unlink(missing_ok=True)
    state: dict[str, Any] = {"pass1": 0.0, "pass2": 0.0, "switch": 0.0}

    def pass_one(chunk):
        choices, seconds = sam.choose([task.messages(ex) for ex in chunk])
        state.update(chunk=chunk, choices=choices, pass1_chunk=seconds)
        state["pass1"] += seconds

    def record(seconds):
        n = len(state["chunk"])
        for ex, c, sec in zip(state["chunk"], state["choices"], seconds):
            row = {"id": ex.id, "true": true, "label": c.label, "expert": c.name,
                   "pass1_seconds": round(state["pass1_chunk"] / n, 4), "pass2_seconds": round(sec, 4)}
            rows[ex.id] = row
            if rows_path is not None:
                append_jsonl(rows_path, row)

    info = {"strategy": sam.strategy.name, "experts": str(experts.directory) if experts.directory else None,
            "domains": experts.domains}
    summary, records = evaluate(sam.rt.model, sam.rt.tokenizer, config, task=task, data_dir=data_dir,
                                out_dir=out_dir, resume=resume, progress=progress, engine=_PassTwo(sam, state, record),
                                extra={**info, **extra}, before_generate=pass_one)
    dispatch_rows = [rows[r["id"]] for r in records if r["id"] in rows]
    summary["adaptation"] = {**info, "true_label": true, **dispatch_summary(dispatch_rows, sam.strategy.name),
                             "timing": timing_summary(state)}
    if out_dir is not None:
        atomic_write_json(Path(out_dir) / "summary.json", summary)
    return summary, records, dispatch_rows


def evaluate_expert(model, expert, config: EvalConfig, *, task: Task | None = None, allow_transfer: bool = False,
                    shuffle_seed: int | None = None, data_dir=None, out_dir=None, resume: bool = False,
                    progress: bool = True, extra: dict[str, Any] | None = None):
    """Evaluate one expert (a directory or an `Expert`) on `model` (alias, path or LoadedModel): what
    `t2 eval --expert` runs. Returns (summary, records).

    The expert is checked against the model (`allow_transfer` for other weights of the same shapes) and merged;
    `shuffle_seed` permutes each matrix's z entries first (the transfer control); a few-shot expert is scored
    without the shots it was adapted on (their ids are in the summary's config as `excluded_shot_ids`).
    """
    task = task or get_task(config.task)
    am, expert = AdaptedModel.for_expert(model, expert, allow_transfer=allow_transfer, progress=progress)
    extra = dict(extra or {})
    if shuffle_seed is not None:
        expert = shuffle_expert(expert, shuffle_seed)
        extra["shuffle_expert_seed"] = shuffle_seed
    extra["expert_name"] = expert.name
    held = heldout_task(task, expert)
    if held is not task:
        extra["excluded_shot_ids"] = sorted(held.exclude)
    am.apply(expert)
    return evaluate(am.model, am.tokenizer, config, task=held, data_dir=data_dir, out_dir=out_dir, resume=resume,
                    progress=progress, extra=extra)


def dispatch_summary(rows: list[dict], strategy: str) -> dict[str, Any]:
    """Confusion matrix (true label -> chosen label -> count), dispatch accuracy and expert usage."""
    confusion: dict[str, Counter] = {}
    for r in rows:
        confusion.setdefault(r["true"], Counter())[r["label"]] += 1
    right = sum(1 for r in rows if r["label"] == r["true"])
    return {
        "confusion": {t: dict(c) for t, c in confusion.items()},
        "experts_used": dict(Counter(r["expert"] for r in rows)),
        # few-shot adaptation has no dispatch decision to be right or wrong about
        "dispatch_accuracy": None if strategy == "fewshot" or not rows else right / len(rows),
    }


def timing_summary(state: dict) -> dict[str, float | None]:
    p1, p2 = state["pass1"], state["pass2"]
    return {"pass1_seconds": round(p1, 3), "pass2_seconds": round(p2, 3),
            "switch_seconds": round(state["switch"], 3),
            "pass1_fraction": round(p1 / (p1 + p2), 4) if p1 + p2 > 0 else None}
