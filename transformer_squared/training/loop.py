"""The recipe: `train(TrainConfig(...)) -> TrainResult`, top to bottom.

Each step: draw this rank's shard of the batch → (RL) roll out with the merged policy and score with the task /
(SFT) take the reference replies → one gradient pass in micro-batches → sum gradients over ranks → clip →
AdamW → refresh the merged weights. Every `eval_every` steps: greedy accuracy on a fixed validation subset,
keeping the best state. At the end: the best state is scored on the test subset and saved as the expert.

How this departs from the paper's SVF-RL (SPEC §2), in order:

1. The KL penalty is exact over the vocabulary at each generated position (see `losses.py`), direction
   KL(π_θ ‖ π_base); the paper states λ but not the estimator. Default λ = 0, as in the reference code.
2. Optional leave-one-out baseline (`--samples-per-prompt G > 1` with `--temperature > 0`; `--baseline loo`, the
   default) and GRPO's per-group scaling (`--advantage-norm std`); the default G = 1, temperature 0 is the
   paper's recipe: greedy rollouts, advantage = reward, no baseline. `--baseline none` keeps the paper's raw
   reward with G > 1 sampled rollouts.
3. Adam(W) with weight decay 0 by default: decoupled decay would pull z towards 0, where z = 1 is the base.
   Cosine decay to 0 by default (paper), `--schedule constant` for the reference code's behaviour.
4. The batch defaults to 16 prompts, not 256, so that CPU runs finish; gradient-norm clip 1e-3 as in the paper.
5. Early stopping is "keep the best validation step" on a seeded subset (`--valid-limit`, default 200, the
   whole split when smaller; the same subset whatever the training seed) evaluated every `--eval-every` steps
   and at the last step; the test score reported is that of the best step. The untrained policy (step 0: the
   base model) is validated first and is a candidate too, winning ties (`--no-select-base` leaves it out): an
   expert worse than the base on validation is never shipped, and its record says whether it beat the base.
   A run shorter than `--eval-every` steps is a smoke run: it skips validation and test scoring and saves the
   last state (pass `--eval-every 1` to score it anyway).
6. z is trained in the `direct` parametrization by default (z starts at exactly 1); `--parametrization
   reference` gives the paper code's sigmoid + nuclear-norm rescale.
7. With sampled rollouts the REINFORCE log-probs are those of the sampling distribution (temperature, top-p
   nucleus; `losses.sampling_logprobs`), so the gradient is that of the policy that produced the samples;
   greedy rollouts keep log π at T = 1 as the paper.
8. Per step, besides loss and reward: `mixed` (share of prompts whose G samples got different rewards: only
   those carry signal under the leave-one-out baseline), `distinct` (mean number of different answers among a
   prompt's G samples: 1 when the policy has collapsed onto one answer), `answers` (the shares of the four
   most frequent extracted answers, each cut to 32 characters), `no_answer` (share of rollouts the scorer extracted no answer from),
   `adv_abs` (mean |advantage|) and `z_drift` (SVF: mean |z − 1|), so a run that does not learn says why.
9. Rollouts may run in a low precision (`--rollout-precision`, default auto: int8 on CPUs; validation and test
   stay exact): each token's policy-gradient term is then weighted by the truncated importance ratio
   min(π_train / π_rollout, `--tis-cap`) of the fp32 forward to the distribution the rollout sampled from
   (`losses.truncated_ratio`), and the rows report `tis_ratio_mean`, `tis_ratio_max` (before the cap) and
   `tis_truncated` (share of tokens capped).

Defaults are sized for CPU runs (validation on 200 examples every 10 steps, test on 100): pass
`--valid-limit -1 --test-limit -1` for the full splits. On CPU, torch gets one thread per idle core unless
`--threads` or OMP_NUM_THREADS says otherwise (see `_set_threads`). Untested on GPU (`--device cuda --dtype
bf16` is written for it: every tensor follows the model's device, SVF math stays fp32).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..adapted import AdaptedModel, base_meta
from ..errors import T2Error
from ..evaluation import select_examples
from ..fileio import append_jsonl, atomic_write_text
from ..generation import Engine, SamplingParams
from ..models import LoadedModel, load_model
from ..plots import optional_plot, plot_curves
from ..svf import ZInit
from ..tasks import Task, get_task
from . import checkpoint, distributed
from .config import TrainConfig
from .distributed import Dist
from .evaluate import accuracy, limit
from .losses import kl_to_base, reinforce_loss, sampling_logprobs, sft_loss, token_logprobs, truncated_ratio
from .lora import LoRAPolicy  # imports peft only when a LoRA policy is made (an optional extra)
from .policy import SVFPolicy
from .rollout import Batch, DataOrder, hash_seed, rollouts, sft_batches
from .sequences import completion_logits, completion_logprobs, micro_batches, pack, pad_completions

METRICS = "metrics.jsonl"
CURVES = "curves.png"
EXPERT = "expert"
CHECKPOINT = "checkpoint"
ANSWER_CHARS = 32  # metrics' `answers` keys: a label or a number whole, a long extracted answer (code) cut


@dataclass
class TrainResult:
    """What a run produced (paths are under `out`)."""

    out: Path
    expert: Path | None  # None when the run stopped early (`stop_after`)
    steps: int  # steps completed
    best_step: int | None
    valid: list[dict] = field(default_factory=list)  # [{"step", "accuracy", "n", ...}]
    test: dict | None = None  # {"n", "correct", "accuracy", "ci95"} of the best step
    seconds: float = 0.0
    interrupted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}


def make_policy(cfg: TrainConfig, lm: LoadedModel, progress: bool):
    """The trainable policy for `cfg.method` on `lm.model` (modified in place until `policy.close()`)."""
    if cfg.method == "svf":
        am = AdaptedModel.prepare(lm, cfg.targets, progress=progress)
        return SVFPolicy(am, ZInit(parametrization=cfg.parametrization), seed=cfg.seed)
    return LoRAPolicy(lm.model, rank=cfg.lora_rank, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                      targets=cfg.lora_targets, seed=cfg.seed)


def lr_lambda(cfg: TrainConfig):
    """Multiplier of the base lr at scheduler step s (0-based): linear warmup, then cosine to 0 or constant."""
    def f(s: int) -> float:
        if s < cfg.warmup_steps:
            return (s + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        progress = (s - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return f


def gradient_pass(policy, batch: Batch, cfg: TrainConfig, normalizer: float, pad_id: int,
                  device: torch.device) -> dict[str, float]:
    """Forward/backward over the batch in micro-batches; leaves ∂loss/∂params in `.grad`. Returns sums."""
    sums: dict[str, float] = defaultdict(float)
    rl = cfg.objective == "rl"
    G = cfg.samples_per_prompt if rl else 1  # rollouts come in runs of G sharing a prompt
    with policy.grad_pass():
        for index in micro_batches(batch.prompts, batch.completions, cfg.micro_batch_tokens, G):
            packed = pack(batch.prompts, batch.completions, pad_id, index, device)
            base_logp = None
            if rl and cfg.kl_coef > 0:
                with policy.reference():
                    _, base_logp = token_logprobs(completion_logits(policy.model, packed, G), packed.tokens)
            if rl:
                # the rollouts' own distribution (temperature, nucleus); the KL compares untempered policies
                kl = None
                if base_logp is not None:  # the KL needs every token's probability: the full logits
                    logits = completion_logits(policy.model, packed, G)  # (N, Tc, V)
                    tok_logp = sampling_logprobs(logits, packed.tokens, cfg.temperature, cfg.top_p)  # (N, Tc)
                    kl = kl_to_base(token_logprobs(logits, packed.tokens)[1], base_logp, packed.mask)
                else:  # the sampled tokens' log-probs only, a chunk of positions at a time (sequences.py)
                    tok_logp = completion_logprobs(policy.model, packed, G, cfg.temperature, cfg.top_p)
                adv = batch.advantages[index].to(device)  # (N,)
                weights = None
                if batch.rollout_logprobs is not None:  # low-precision rollouts: truncated importance weights
                    behaviour = pad_completions(batch.rollout_logprobs, index, packed.tokens.shape[1], device)
                    weights, tis = truncated_ratio(tok_logp, behaviour, packed.mask, cfg.tis_cap)  # (N, Tc)
                    sums["tis_max"] = max(sums.get("tis_max", 0.0), tis.pop("tis_max"))
                    for k, v in tis.items():
                        sums[k] += v
                loss, parts = reinforce_loss(tok_logp, packed.mask, adv, normalizer, kl, cfg.kl_coef, weights)
            else:
                loss, parts = sft_loss(completion_logprobs(policy.model, packed), packed.mask, normalizer)
            loss.backward()
            sums["loss"] += float(loss.detach())
            for k, v in parts.items():
                sums[k] += v
    return sums


def optimizer_step(policy, optimizer, scheduler, cfg: TrainConfig, d: Dist) -> tuple[float, float]:
    """Sum gradients over ranks, clip, step, refresh the merged weights. Returns (grad norm, lr used)."""
    params = policy.parameters()
    distributed.all_reduce_grads(params, d)
    max_norm = cfg.grad_clip if cfg.grad_clip and cfg.grad_clip > 0 else float("inf")
    norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    policy.after_update()
    return norm, lr


def train(config: TrainConfig, *, model: LoadedModel | None = None, task: Task | None = None) -> TrainResult:
    """Train one expert as `config` says; `model` / `task` override `config.model` / `config.task` (tests)."""
    t_start = time.perf_counter()
    d = distributed.setup(config.device)
    _set_threads(config.threads, d)
    try:
        return _train(config, d, model, task, t_start)
    finally:
        if d.owned:
            distributed.teardown()


def _task_options(config: TrainConfig) -> dict:
    """Options of the dispatch meta-task (its expert set, how its prompts are written); none for other tasks."""
    options = {"experts": config.experts} if config.experts else {}
    if config.dispatch_form != "template":
        if config.task != "dispatch":
            raise T2Error(f"--dispatch-form is for --task dispatch, not {config.task}")
        options["form"] = config.dispatch_form
    return options


def _train(config: TrainConfig, d: Dist, model: LoadedModel | None, task: Task | None, t_start: float):
    task = task or get_task(config.task, **_task_options(config))
    cfg = config.resolved(task.max_new_tokens)
    out = Path(cfg.out)
    _prepare_out(out, cfg, d)
    random.seed(hash_seed(cfg.seed, d.rank))
    torch.manual_seed(hash_seed(cfg.seed, d.rank))

    train_set = limit(_load(task, cfg.train_split, cfg), cfg.train_limit)
    evaluate = cfg.steps >= cfg.eval_every  # shorter runs are smoke runs: nothing to select, not worth scoring
    # Validation picks the step: a seeded subset (seed 0, the same whatever the training seed), not the first N,
    # which in split order can be one source or one kind of question.
    valid_set = (select_examples(_load(task, cfg.valid_split, cfg), None if cfg.valid_limit < 0 else cfg.valid_limit,
                                 0) if cfg.valid_limit and evaluate else [])
    # The test subset is `t2 eval --limit N`'s (seed 0, whatever the training seed), so base and trained models
    # are scored on the same examples.
    test_set = (select_examples(_load(task, cfg.test_split, cfg), None if cfg.test_limit < 0 else cfg.test_limit, 0)
                if cfg.test_limit and evaluate else [])
    if cfg.batch_size < d.world:
        raise T2Error(f"--batch-size {cfg.batch_size} is smaller than the {d.world} ranks; each rank needs a prompt")

    if model is None:
        model = load_model(cfg.model, dtype=torch.bfloat16 if cfg.dtype == "bf16" else torch.float32,
                           device=d.device)
    else:
        model.model.to(d.device)
    tok = model.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    identity = None
    if cfg.method == "lora":  # (SVF experts get it from the adapted model) the weights' fingerprint, before LoRA
        identity = base_meta(model, "mlp")["base_model"]
    policy = make_policy(cfg, model, progress=cfg.progress and d.main)
    try:
        return _run(cfg, d, model, task, policy, train_set, valid_set, test_set, pad_id, out, t_start, identity)
    finally:
        policy.close()


def _run(cfg, d, model, task, policy, train_set, valid_set, test_set, pad_id, out, t_start,
         identity) -> TrainResult:
    params = policy.parameters()
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    order = DataOrder(len(train_set), cfg.seed)
    history: list[dict] = []
    valid: list[dict] = []
    best: dict[str, Any] = {"step": None, "accuracy": -1.0, "state": None}
    step = 0
    if cfg.resume:
        step = _restore(out / CHECKPOINT, cfg, d, policy, optimizer, scheduler, order, history, valid, best)
        if d.main:
            atomic_write_text(out / METRICS, "".join(_jsonl(r) for r in history))  # drop rows past the checkpoint

    engine = Engine(policy.generation_model, model.tokenizer, max_batch_size=cfg.eval_batch_size)  # validation, test
    rollout_engine = engine
    if cfg.objective == "rl":
        if rollout_precision(cfg, engine) != "exact":  # its own low-precision copies of the weights (packed.py)
            rollout_engine = Engine(policy.generation_model, model.tokenizer, max_batch_size=cfg.eval_batch_size,
                                    precision=rollout_precision(cfg, engine))
        params_ = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                 top_p=cfg.top_p, stop=tuple(task.stop))
        batches = rollouts(policy, rollout_engine, model.tokenizer, task, train_set, order, batch_size=cfg.batch_size,
                           samples_per_prompt=cfg.samples_per_prompt, params=params_,
                           wrong_reward=cfg.wrong_reward, seed=cfg.seed, start_step=step, d=d,
                           baseline=cfg.baseline, advantage_norm=cfg.advantage_norm)
    else:
        batches = sft_batches(model.tokenizer, task, train_set, order, batch_size=cfg.batch_size, d=d)

    if valid_set and step == 0 and cfg.select_base:
        # Step 0 is the untrained policy (direct z = 1 and LoRA's B = 0: the base model exactly): the bar every
        # trained step must clear, strictly (`>` below), to be kept.
        summary = accuracy(policy, engine, model.tokenizer, task, valid_set, max_new_tokens=cfg.max_new_tokens, d=d)
        valid.append({"step": 0, **summary})
        best.update(step=0, accuracy=summary["accuracy"], state=policy.state())
        row = {"step": 0, "valid_accuracy": summary["accuracy"]}
        if hasattr(policy, "z_drift"):
            row["z_drift"] = policy.z_drift()
        history.append(row)
        if d.main:
            append_jsonl(out / METRICS, row)

    bar = _progress(cfg, d, step)
    interrupted = False
    while step < cfg.steps:
        step += 1
        t0 = time.perf_counter()
        batch = next(batches)
        if cfg.objective == "rl":
            normalizer = float(cfg.batch_size * cfg.samples_per_prompt)
        else:
            normalizer = max(1.0, distributed.sum_floats([batch.completion_tokens], d)[0])
        sums = gradient_pass(policy, batch, cfg, normalizer, pad_id, d.device)
        norm, lr = optimizer_step(policy, optimizer, scheduler, cfg, d)
        row = _row(step, sums, batch, norm, lr, cfg, d, time.perf_counter() - t0)
        if hasattr(policy, "z_drift"):
            row["z_drift"] = policy.z_drift()
        if valid_set and (step % cfg.eval_every == 0 or step == cfg.steps):
            summary = accuracy(policy, engine, model.tokenizer, task, valid_set, max_new_tokens=cfg.max_new_tokens, d=d)
            valid.append({"step": step, **summary})
            row["valid_accuracy"] = summary["accuracy"]
            if summary["accuracy"] > best["accuracy"]:
                best.update(step=step, accuracy=summary["accuracy"], state=policy.state())
        history.append(row)
        if d.main:
            append_jsonl(out / METRICS, row)
        if bar is not None:
            bar.update(1)
            bar.set_postfix({k: f"{row[k]:.3g}" for k in ("loss", "reward", "accuracy", "valid_accuracy") if k in row})
        if cfg.checkpoint_every and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
            _save_checkpoint(out / CHECKPOINT, cfg, d, model, policy, optimizer, scheduler, order, step, history,
                             valid, best)
        if cfg.stop_after is not None and step >= cfg.stop_after and step < cfg.steps:
            interrupted = True
            break
    if bar is not None:
        bar.close()
    if d.main:
        _plot_curves(out / CURVES, history, task.name, cfg)
    if interrupted:
        return TrainResult(out, None, step, best["step"], valid, None, time.perf_counter() - t_start, True)

    if best["state"] is not None:
        policy.load_state(best["state"])
    selected = best["step"] if best["state"] is not None else step
    base_valid = next((v for v in valid if v["step"] == 0), None)
    test = None
    if test_set:
        test = accuracy(policy, engine, model.tokenizer, task, test_set, max_new_tokens=cfg.max_new_tokens, d=d)
    expert = out / EXPERT
    if d.main:
        meta = {"name": task.domain or task.name, "task": task.name, "domain": task.domain,
                "method": cfg.method, "objective": cfg.objective, "parametrization": cfg.parametrization,
                "library_version": __version__,
                "training": {"config": cfg.to_dict(), "steps": step, "world_size": d.world,
                             **({"rollout_precision": rollout_engine.precision_info} if cfg.objective == "rl"
                                else {})},
                "metrics": {"selected_step": selected, "selection": "best_valid" if best["state"] is not None
                            else "last", "valid_split": cfg.valid_split, "valid": valid,
                            "test_split": cfg.test_split, "test": test}}
        if base_valid is not None:
            # Whether training beat the base on validation; when it did not, what is saved is the step-0 state.
            meta["metrics"]["base_valid"] = base_valid
            meta["metrics"]["beats_base"] = selected != 0
            if selected == 0:
                meta["metrics"]["note"] = ("no trained step beat the base model on validation: this expert is the "
                                           "untrained step-0 state" + (" (z = 1, the base model)"
                                                                       if cfg.parametrization == "direct"
                                                                       or cfg.method == "lora" else ""))
        if identity is not None:
            meta["base_model"] = identity
        policy.save(expert, meta)
    distributed.barrier(d)
    return TrainResult(out, expert, step, best["step"], valid, test, time.perf_counter() - t_start)


def rollout_precision(cfg: TrainConfig, engine: Engine) -> str:
    """The engine precision RL rollouts request: `cfg.rollout_precision`, with auto = fast on CPU (measured
    faster there, see the field's help), exact elsewhere."""
    if cfg.rollout_precision != "auto":
        return cfg.rollout_precision
    return "fast" if engine.device.type == "cpu" else "exact"


def _row(step: int, sums: dict, batch: Batch, norm: float, lr: float, cfg: TrainConfig, d: Dist,
         seconds: float) -> dict:
    """One metrics.jsonl line: means over the global batch."""
    n_local = batch.size
    keys = ["loss", "kl", "logp"]
    local = [sums.get(k, 0.0) for k in keys] + [n_local, batch.completion_tokens,
                                                 float(batch.rewards.sum()), float(batch.correct.sum())]
    loss, kl, logp, n, tokens, reward, correct = distributed.sum_floats(local, d)
    row = {"step": step, "loss": loss, "grad_norm": norm, "lr": lr, "seconds": round(seconds, 3),
           "tokens": int(tokens)}
    if cfg.objective == "rl":
        G = batch.group
        groups = batch.rewards.view(-1, G)  # (P, G)
        mixed_local = float((groups != groups[:, :1]).any(dim=1).sum())
        distinct_local = float(sum(len(set(batch.answers[i : i + G])) for i in range(0, batch.size, G)))
        mixed, distinct, prompts, answered, adv_abs = distributed.sum_floats(
            [mixed_local, distinct_local, float(groups.shape[0]), float(batch.answered.sum()),
             float(batch.advantages.abs().sum())], d)
        counts = Counter(a[:ANSWER_CHARS] for answers in distributed.gather_objects(batch.answers, d)
                         for a in answers)
        row.update(reward=reward / n, accuracy=correct / n, logp=logp / n, no_answer=1 - answered / n,
                   adv_abs=adv_abs / n, answers={a: c / n for a, c in counts.most_common(4)})
        if G > 1:  # one sample has nothing to differ from
            row["mixed"] = mixed / prompts
            row["distinct"] = distinct / prompts
        if cfg.kl_coef > 0:
            row["kl"] = kl / n
        if batch.rollout_logprobs is not None:  # low-precision rollouts: their importance ratios, before the cap
            tis_sum, tis_truncated, tis_tokens = distributed.sum_floats(
                [sums.get("tis_sum", 0.0), sums.get("tis_truncated", 0.0), sums.get("tis_tokens", 0.0)], d)
            row.update(tis_ratio_mean=tis_sum / max(1.0, tis_tokens),
                       tis_ratio_max=max(distributed.gather_objects(sums.get("tis_max", 1.0), d)),
                       tis_truncated=tis_truncated / max(1.0, tis_tokens))
    return row


def _load(task: Task, split: str, cfg: TrainConfig):
    if split not in task.splits:
        raise T2Error(f"task {task.name!r} has no split {split!r} (it has {', '.join(task.splits)}); "
                      f"pick one with --train-split/--valid-split/--test-split, or 0 for --valid-limit/--test-limit")
    examples = task.load(split, cfg.data_dir)
    if not examples:
        raise T2Error(f"task {task.name!r}: split {split!r} is empty")
    return examples


def _prepare_out(out: Path, cfg: TrainConfig, d: Dist) -> None:
    """Refuse to mix two runs in one directory unless resuming or overwriting."""
    existing = [p for p in (out / METRICS, out / CHECKPOINT, out / EXPERT) if p.exists()]
    if cfg.resume:
        if not (out / CHECKPOINT).is_dir():
            raise T2Error(f"{out}: no checkpoint to resume from; run without --resume to start")
        return
    if existing and not cfg.overwrite:
        raise T2Error(f"{out} already holds a training run ({existing[0].name}); pass --resume to continue it, "
                      f"--overwrite to replace it, or choose another --out")
    distributed.barrier(d)
    if existing and d.main:
        for p in existing + [out / CURVES]:
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    distributed.barrier(d)


def _save_checkpoint(directory, cfg, d, model, policy, optimizer, scheduler, order, step, history, valid, best):
    rngs = distributed.gather_objects(checkpoint.rng_state(), d)
    if d.main:
        state = {"step": step, "world_size": d.world, "policy": policy.state(),
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "data": order.state_dict(), "rng": rngs, "history": history, "valid": valid,
                 "best": {"step": best["step"], "accuracy": best["accuracy"], "state": best["state"]}}
        checkpoint.save(directory, state, {"config": cfg.recipe(), "base_model": model.identity(), "step": step})
    distributed.barrier(d)


def _restore(directory, cfg, d, policy, optimizer, scheduler, order, history, valid, best) -> int:
    state, info = checkpoint.load(directory)
    checkpoint.check_same_recipe(info.get("config", {}), cfg.recipe(), directory)
    if state["world_size"] != d.world:
        raise T2Error(f"{directory} was written by {state['world_size']} rank(s), this run has {d.world}; "
                      f"resume with the same number of processes")
    policy.load_state(state["policy"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    order.load_state_dict(state["data"])
    checkpoint.set_rng_state(state["rng"][d.rank])
    history[:] = state["history"]
    valid[:] = state["valid"]
    best.update(state["best"])
    return int(state["step"])


def _set_threads(threads: int | None, d: Dist) -> None:
    """Explicit `threads`, else (on CPU, without OMP_NUM_THREADS) one per idle core: on a shared 2-core machine
    with other work running, two OpenMP threads made a 2-step smoke run take 106 s instead of 32 s."""
    if threads:
        torch.set_num_threads(threads)
    elif d.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ and hasattr(os, "getloadavg"):
        idle = (os.cpu_count() or 1) - os.getloadavg()[0]
        torch.set_num_threads(max(1, min(torch.get_num_threads(), int(idle + 0.5))))


def _progress(cfg: TrainConfig, d: Dist, start: int):
    if not (cfg.progress and d.main):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=cfg.steps, initial=start, desc=f"train {cfg.method}-{cfg.objective}", unit="step")


def _plot_curves(path: Path, history: list[dict], title: str, cfg: TrainConfig) -> None:
    keys = ["reward", "accuracy", "valid_accuracy", "mixed", "no_answer", "z_drift", "loss", "kl", "grad_norm"]
    series = {k: [(r["step"], r[k]) for r in history if k in r] for k in keys}
    if any(series.values()):
        optional_plot(plot_curves, series, path, title=f"{title}: {cfg.method} {cfg.objective}")


def _jsonl(row: dict) -> str:
    return json.dumps(row) + "\n"
