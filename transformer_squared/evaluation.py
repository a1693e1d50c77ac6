"""Evaluate a model (optionally with an expert) on a task: generate, score, summarise with a 95% CI.

`generate_and_score` is the one generate -> score path: `t2 eval` (`evaluate`), the two-pass system's
evaluation (`adaptation.evaluate`, through `evaluate` with pass 2 as its engine) and training's validation and
test accuracy (`training.evaluate.accuracy`) all build prompts with `tasks.prompt_ids`, decode with
`sampling_params`, and score `tasks.full_reply` with the task's batch scorer through it, so a validation accuracy
during training and a `t2 eval` of the same expert on the same examples cannot drift apart.

Long evaluations are resumable: with an output directory, per-sample records are appended to
`records.jsonl` chunk by chunk, and a rerun with `resume=True` and the same configuration skips the ids
already there. `summary.json` is written (atomically) at the end.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import T2Error
from .fileio import append_jsonl, atomic_write_json, read_json, read_jsonl
from .metrics import accuracy_summary
from .tasks import Example, Task, Verdict, full_reply, get_task, prompt_ids


# generation/precision.py's choices, here for the configs and flags that must not import torch to parse
PRECISIONS = ("exact", "fast", "int8", "bf16")
PRECISION_HELP = ("what the linear layers compute in: exact (the model's weights), int8 (CPU, dynamic quantisation), "
                  "bf16, or fast (the faster of those on this device); a low precision changes some outputs "
                  "(generation/precision.py)")


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate; recorded in the summary so a result says how it was made."""

    task: str = field(metadata={"help": "gsm8k, math, math500, arc-easy, arc-challenge, mbpp, mbpp-sanitized, "
                                        "humaneval, or custom:<file.jsonl>"})
    split: str | None = field(default=None, metadata={"help": "split (default: the task's test split)"})
    limit: int | None = field(default=None, metadata={"help": "evaluate a seeded random subset of this size"})
    seed: int = field(default=0, metadata={"help": "seed for the subset and for sampling"})
    batch_size: int = field(default=16, metadata={"help": "prompts generated together"})
    max_new_tokens: int | None = field(default=None, metadata={"help": "default: the task's own budget"})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy (default)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling: keep the smallest set of tokens with "
                                                        "this much probability (1 = all)"})
    workers: int = field(default=2, metadata={"help": "parallel sandboxes for code tasks"})
    chunk: int = field(default=64, metadata={"help": "examples per generate/score/save round"})
    precision: str = field(default="exact", metadata={"help": PRECISION_HELP, "choices": PRECISIONS})

    def __post_init__(self):
        if self.limit is not None and self.limit < 1:
            raise T2Error(f"--limit must be at least 1, got {self.limit}")
        if self.batch_size < 1:
            raise T2Error(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.precision not in PRECISIONS:
            raise T2Error(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


def select_examples(examples: Sequence[Example], limit: int | None, seed: int) -> list[Example]:
    """All examples, or a seeded random subset of `limit` in the split's order (stable across runs)."""
    if limit is None or limit >= len(examples):
        return list(examples)
    keep = set(random.Random(seed).sample(range(len(examples)), limit))
    return [ex for i, ex in enumerate(examples) if i in keep]


def sampling_params(task: Task, max_new_tokens: int | None = None, *, temperature: float = 0.0,
                    top_p: float = 1.0, seed: int | None = None):
    """How an evaluation decodes `task`: its own token budget unless one is given, its stop strings, greedy by
    default."""
    # generation imports torch: here, not at module level, because the CLI imports EvalConfig while parsing
    from .generation import SamplingParams

    return SamplingParams(max_new_tokens=max_new_tokens or task.max_new_tokens, temperature=temperature,
                          top_p=top_p, stop=tuple(task.stop), seed=seed)


@dataclass
class Scored:
    """What `generate_and_score` returns for a list of examples (same order), with its two timings."""

    outputs: list[Any]  # generation.Completion per example
    replies: list[str]  # the whole reply scored: response prefix + generated text
    verdicts: list[Verdict]
    generation_seconds: float
    scoring_seconds: float


def generate_and_score(engine, tokenizer, task: Task, examples: Sequence[Example], params, *,
                       workers: int = 2) -> Scored:
    """Answer `examples` with `engine` (anything with `generate(prompt_ids, params)`, e.g. a generation.Engine)
    and score the replies with the task: the evaluation path every accuracy in the library comes from."""
    examples = list(examples)
    t0 = time.perf_counter()
    outs = list(engine.generate([prompt_ids(task, tokenizer, ex) for ex in examples], params))
    t1 = time.perf_counter()
    replies = [full_reply(task, ex, o.text) for ex, o in zip(examples, outs)]
    verdicts = task.score_many(examples, replies, workers=workers)
    return Scored(outs, replies, verdicts, t1 - t0, time.perf_counter() - t1)


def evaluate(
    model,
    tokenizer,
    config: EvalConfig,
    *,
    task: Task | None = None,
    data_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    engine=None,
    extra: dict[str, Any] | None = None,
    before_generate: Callable[[list[Example]], None] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run `config` on `model` as it is now (merge an expert before calling). Returns (summary, records).

    summary: task, split, n, correct, accuracy, ci95, seconds (+ timing and config); records: one per example
    with id, prompt, output, extracted, correct, detail, finish_reason, tokens.
    """
    from tqdm.auto import tqdm

    from .generation import Engine  # torch: see sampling_params

    start = time.perf_counter()
    task = task or get_task(config.task)
    split = config.split or task.default_split
    if split not in task.splits:
        raise T2Error(f"task {task.name} has no split {split!r}; it has {', '.join(task.splits)}")
    examples = select_examples(task.load(split, data_dir), config.limit, config.seed)
    engine = engine or Engine(model, tokenizer, max_batch_size=config.batch_size, precision=config.precision)
    params = sampling_params(task, config.max_new_tokens, temperature=config.temperature, top_p=config.top_p,
                             seed=config.seed)
    run_config = {**asdict(config), "split": split, **(extra or {})}
    if config.precision != "exact" and hasattr(engine, "compute_precision"):
        run_config["compute_precision"] = engine.compute_precision  # what "fast" chose here

    records_path = Path(out_dir) / "records.jsonl" if out_dir else None
    done: dict[str, dict] = {}
    if records_path is not None:
        done = _resume_records(Path(out_dir), run_config, resume)
    todo = [ex for ex in examples if ex.id not in done]

    gen_s = score_s = 0.0
    new_tokens = 0
    bar = tqdm(total=len(examples), initial=len(examples) - len(todo), desc=f"eval {task.name}",
               unit="ex", disable=not progress, leave=False)
    for i in range(0, len(todo), config.chunk):
        chunk = todo[i:i + config.chunk]
        if before_generate is not None:
            before_generate(chunk)
        scored = generate_and_score(engine, tokenizer, task, chunk, params, workers=config.workers)
        gen_s, score_s = gen_s + scored.generation_seconds, score_s + scored.scoring_seconds
        for ex, out, reply, v in zip(chunk, scored.outputs, scored.replies, scored.verdicts):
            new_tokens += len(out.token_ids)
            rec = {"id": ex.id, "prompt": ex.prompt, "output": reply, "extracted": v.extracted,
                   "correct": bool(v.correct), "detail": v.detail, "finish_reason": out.finish_reason,
                   "tokens": len(out.token_ids)}
            done[ex.id] = rec
            if records_path is not None:
                append_jsonl(records_path, rec)
        bar.update(len(chunk))
        bar.set_postfix(acc=f"{sum(r['correct'] for r in done.values()) / max(1, len(done)):.3f}")
    bar.close()

    records = [done[ex.id] for ex in examples]
    summary = {
        "task": task.name, "split": split, **accuracy_summary([r["correct"] for r in records]),
        "seconds": round(time.perf_counter() - start, 3),
        "generation_seconds": round(gen_s, 3), "scoring_seconds": round(score_s, 3),
        "new_tokens": new_tokens, "tokens_per_second": round(new_tokens / gen_s, 2) if gen_s else None,
        "resumed": len(examples) - len(todo), "config": run_config,
    }
    if out_dir is not None:
        atomic_write_json(Path(out_dir) / "summary.json", summary)
    return summary, records


def _resume_records(out_dir: Path, run_config: dict, resume: bool) -> dict[str, dict]:
    """Records already in `out_dir` when resuming a run of the same configuration; else start afresh."""
    cfg_path, rec_path = out_dir / "config.json", out_dir / "records.jsonl"
    wanted = json.loads(json.dumps(run_config, default=str))
    if resume and cfg_path.is_file() and rec_path.is_file():
        if read_json(cfg_path, what="evaluation config") != wanted:
            raise T2Error(f"{out_dir} holds an evaluation with another configuration; use another --out "
                          f"or drop --resume")
        return {r["id"]: r for r in read_jsonl(rec_path)}
    rec_path.unlink(missing_ok=True)
    (out_dir / "summary.json").unlink(missing_ok=True)
    atomic_write_json(cfg_path, wanted)
    return {}
