"""How many prompts an RL step needs before its gradient points somewhere: the signal-to-noise ratio of SVF-RL's
policy gradient at the base model (z = 1), measured per prompt.

One batch of P prompts x G samples is rolled out exactly as `t2 train --objective rl` does (same prompts, sampling,
reward and leave-one-out advantages); then the gradient of each prompt group's loss is taken on its own, g_k (k = 1..P),
so that a step's gradient over B prompts is the mean of B such vectors. With mu = E[g_k] and Sigma their covariance:

    E |mean of B|^2 = |mu|^2 + tr(Sigma) / B

`mu2` is the unbiased estimate of |mu|^2 (|mean|^2 - tr(Sigma_hat) / P) and `tr_sigma` that of tr(Sigma); the batch
at which the signal's norm equals the noise's is B* = tr(Sigma) / |mu|^2 (`batch_for_snr_1`; undefined when mu2 <= 0,
i.e. no signal detectable with P prompts). `mu2_upper95` is a bootstrap (over prompts) 95% upper bound of |mu|^2, so
`batch_for_snr_1_lower95` = tr(Sigma) / mu2_upper95 is a lower bound of B* even when no signal was detected.
`cos_halves` is the cosine between the mean gradients of the two halves of the prompts (independent estimates of
mu): near 0 when the direction is noise. Adam moves each coordinate by
about lr a step whatever this ratio, so when B* is far above the step's prompts the update is a random walk (mean
|z - 1| growing like lr * sqrt(steps)).

    python results/grad_snr.py --model QWEN.gguf --task mbpp --prompts 32 --samples 4 --max-new-tokens 512 \\
        --out results/qwen/grad_snr_mbpp.json --data-dir ../shared/data

Where the noise comes from (`--pair OTHER.pt`): a second rollout of the same P prompts with another sampling seed
(`--sample-seed`) gives a second, independent gradient b_k of each prompt beside the first run's a_k (saved by its
`--save-gradients`). With m_k = E[g_k] the prompt's own expected direction, a_k . b_k is an unbiased estimate of
|m_k|^2, so tr(Sigma) splits into sampling noise (what more samples per prompt remove) and the prompts' disagreement
(what only more prompts remove):

    per_prompt_signal = mean_k a_k . b_k                    estimates mean_k |m_k|^2
    common_signal     = mean_{k != j} a_k . b_j             estimates |mu|^2 over these prompts
    between_prompts   = per_prompt_signal - common_signal   mean_k |m_k - mu|^2: no G removes it
    sampling_noise    = mean_k (|a_k|^2 + |b_k|^2) / 2 - per_prompt_signal   (at this G)

`batch_for_snr_1_infinite_samples` = between_prompts / common_signal is B* with noiseless groups. 95% intervals from a
bootstrap over prompts.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from transformer_squared.fileio import atomic_write_text
from transformer_squared.generation import Engine, SamplingParams
from transformer_squared.models import load_model
from transformer_squared.tasks import get_task
from transformer_squared.training.config import TrainConfig
from transformer_squared.training.distributed import Dist
from transformer_squared.training.loop import gradient_pass, make_policy
from transformer_squared.training.rollout import Batch, DataOrder, rollouts


def snr(g: torch.Tensor) -> dict:
    """Signal and noise of per-prompt gradients g (P, D): see the module docstring."""
    P = g.shape[0]
    mean = g.mean(0)
    tr_sigma = float(((g - mean) ** 2).sum() / (P - 1))
    mu2 = float(mean.pow(2).sum()) - tr_sigma / P
    half = P // 2
    a, b = g[:half].mean(0), g[half:2 * half].mean(0)
    cos = float(a @ b / (a.norm() * b.norm())) if a.norm() > 0 and b.norm() > 0 else float("nan")
    # 95% upper bound of |mu|^2 (bootstrap over prompts, 2,000 resamples, seed 0), and from it a lower bound of B*
    gen = torch.Generator().manual_seed(0)
    boot = []
    for _ in range(2000):
        r = g[torch.randint(P, (P,), generator=gen)]
        m = r.mean(0)
        boot.append(float(m.pow(2).sum()) - float(((r - m) ** 2).sum() / (P - 1)) / P)
    mu2_hi = float(torch.tensor(boot).quantile(0.95))
    return {"mu2": mu2, "mu2_upper95": mu2_hi, "tr_sigma": tr_sigma,
            "batch_for_snr_1": tr_sigma / mu2 if mu2 > 0 else None,
            "batch_for_snr_1_lower95": tr_sigma / mu2_hi if mu2_hi > 0 else None,
            "snr_at_8_prompts": (mu2 / (tr_sigma / 8)) ** 0.5 if mu2 > 0 else 0.0, "cos_halves": cos}


def split_noise(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Per-prompt signal, common signal, between-prompt spread and sampling noise from two independent gradients of
    the same P prompts (a, b: (P, D)); see the module docstring."""
    P = a.shape[0]

    cross, sq = a @ b.T, ((a * a).sum(1) + (b * b).sum(1)) / 2  # cross[k, j] = a_k . b_j

    def parts(i: torch.Tensor) -> tuple[float, float, float]:
        c = cross[i][:, i]
        per_prompt = float(c.diagonal().mean())
        other = i[:, None] != i[None, :]  # pairs of distinct prompts (a resample repeats some)
        common = float(c[other].mean())
        return per_prompt, common, float(sq[i].mean()) - per_prompt

    per_prompt, common, noise = parts(torch.arange(P))
    gen = torch.Generator().manual_seed(0)
    boot = [parts(torch.randint(P, (P,), generator=gen)) for _ in range(2000)]
    q = torch.tensor(boot, dtype=torch.double).quantile(torch.tensor([0.025, 0.975], dtype=torch.double), dim=0)
    between = per_prompt - common
    return {"per_prompt_signal": per_prompt, "per_prompt_signal_ci95": q[:, 0].tolist(),
            "common_signal": common, "common_signal_ci95": q[:, 1].tolist(),
            "between_prompts": between, "sampling_noise": noise, "sampling_noise_ci95": q[:, 2].tolist(),
            "per_prompt_signal_over_noise": per_prompt / noise if noise > 0 else None,
            "batch_for_snr_1_infinite_samples": between / common if common > 0 else None}


def pair(g: torch.Tensor, other: dict, path: str, ids: list[str]) -> dict:
    """split_noise of this run's gradients against `other`, those saved at `path`, refusing other prompts."""
    if "ids" in other and list(other["ids"]) != ids:
        raise SystemExit(f"{path}: its prompts are not this run's (same --task, --prompts and --seed needed)")
    if other["gradients"].shape != g.shape:
        raise SystemExit(f"{path}: gradients of shape {tuple(other['gradients'].shape)}, this run's {tuple(g.shape)}")
    return {"with": path, **split_noise(g, other["gradients"].double())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--task", default="mbpp")
    ap.add_argument("--prompts", type=int, default=32, help="P: prompt groups measured")
    ap.add_argument("--samples", type=int, default=4, help="G: samples per prompt (leave-one-out advantages)")
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--experts", default=None, help="--task dispatch: the expert set whose domains it names")
    ap.add_argument("--seed", type=int, default=0, help="picks the prompts (the training run's data order)")
    ap.add_argument("--sample-seed", type=int, default=None, help="seed of the sampling (default: --seed)")
    ap.add_argument("--pair", default=None,
                    help="gradients saved by a run on the same prompts (another --sample-seed): split the noise")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--save-gradients", default=None, help="also save the per-prompt gradients (P, D) here (.pt)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    other = torch.load(args.pair) if args.pair else None  # read first: a bad path fails now, not after the rollouts
    t0 = time.perf_counter()
    cfg = TrainConfig(out="(unused)", model=args.model, task=args.task, method="svf", objective="rl",
                      samples_per_prompt=args.samples, batch_size=args.prompts, temperature=args.temperature,
                      max_new_tokens=args.max_new_tokens, experts=args.experts,
                      micro_batch_tokens=1024, seed=args.seed, data_dir=args.data_dir)
    task = get_task(args.task, **({"experts": args.experts} if args.experts else {}))
    cfg = cfg.resolved(task.max_new_tokens)
    lm = load_model(args.model)
    tok = lm.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    train_set = task.load("train", args.data_dir)
    policy = make_policy(cfg, lm, progress=False)
    try:
        engine = Engine(policy.generation_model, tok, max_batch_size=16)
        params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                stop=tuple(task.stop))
        d = Dist()
        batch = next(rollouts(policy, engine, tok, task, train_set, DataOrder(len(train_set), cfg.seed),
                              batch_size=args.prompts, samples_per_prompt=args.samples, params=params,
                              wrong_reward=cfg.wrong_reward,
                              seed=cfg.seed if args.sample_seed is None else args.sample_seed, start_step=0, d=d))
        t_roll = time.perf_counter() - t0
        G, grads = args.samples, []
        for k in range(args.prompts):
            s = slice(k * G, (k + 1) * G)
            sub = Batch(batch.examples[s], batch.prompts[s], batch.completions[s], batch.rewards[s],
                        batch.correct[s], batch.advantages[s], batch.answered[s], batch.answers[s], G, None)
            if not bool(sub.advantages.abs().gt(0).any()):  # equal rewards: this prompt's gradient is exactly 0
                grads.append(torch.zeros(sum(p.numel() for p in policy.parameters())))
                continue
            gradient_pass(policy, sub, cfg, float(G), pad_id, d.device)
            grads.append(torch.cat([p.grad.detach().flatten().clone() for p in policy.parameters()]))
            for p in policy.parameters():
                p.grad = None
        g = torch.stack(grads).double()  # (P, D)
        if args.save_gradients:
            torch.save({"gradients": g.float(), "rewards": batch.rewards.view(args.prompts, G),
                        "ids": [e.id for e in batch.examples[::G]]}, args.save_gradients)
    finally:
        policy.close()
    P = g.shape[0]
    rewards = batch.rewards.view(P, G).double()
    # The loss is linear in the advantages, so the gradient with GRPO's scaling (--advantage-norm std: each group's
    # leave-one-out advantages divided by its rewards' standard deviation) is each g_k divided by that deviation.
    std = rewards.std(dim=1, unbiased=False)
    g_std = torch.where(std[:, None] > 0, g / std.clamp(min=1e-8)[:, None], torch.zeros_like(g))
    result = {
        "task": args.task, "model": args.model, "prompts": P, "samples": G, "max_new_tokens": cfg.max_new_tokens,
        "temperature": cfg.temperature, "seed": args.seed,
        "mean_reward": float(batch.rewards.mean()),
        "mixed_groups": int((rewards.max(1).values != rewards.min(1).values).sum()),
        "coordinates": int(g.shape[1]),
        "leave_one_out": snr(g), "leave_one_out_std_norm": snr(g_std),
        **({"pair": pair(g, other, args.pair, [e.id for e in batch.examples[::G]])} if args.pair else {}),
        "rollout_seconds": round(t_roll, 1), "seconds": round(time.perf_counter() - t0, 1),
        "command": "python results/grad_snr.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
    }
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
