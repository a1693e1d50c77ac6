"""The objectives, as pure functions of tensors: REINFORCE (+ optional group baseline), KL to the base, NTP.

Shapes: N sequences in a micro-batch, T completion positions (right-padded), V the vocabulary. `logits` are
the model's predictions *for* the completion tokens (position t predicts `tokens[:, t]`); `mask` is 1 on real
completion tokens. Every loss is a *sum* over the micro-batch divided by a `normalizer` that counts the whole
global batch (sequences for RL, target tokens for SFT), so adding micro-batch and rank gradients gives exactly
the gradient of the batch mean.

KL: direction KL(π_θ ‖ π_base), as in SPEC §2's J(z) = E[r·log π] − λ·KL(π_W' ‖ π_W). It is computed exactly
over the vocabulary at every generated position, given the rolled-out prefix, and summed over the sequence's
tokens: KL_seq = Σ_t Σ_v π_θ(v|ŷ<t) (log π_θ(v|ŷ<t) − log π_base(v|ŷ<t)). Unlike a sampled-token estimator it
needs no samples from π_θ (the paper's rollouts are greedy), has no variance, and its gradient is exact at the
visited prefixes (it ignores how θ changes which prefixes are visited, as per-token KL penalties do).

Which distribution the REINFORCE log-probs come from: the one the rollouts were *sampled* from
(`sampling_logprobs`: softmax(logits / T), restricted and renormalised to the top-p nucleus), so that
E[A · ∇log π_sample(ŷ)] is the policy gradient of the sampling policy. Scoring tempered or truncated samples
with the untempered log π (what this code did before) gives a gradient of a different objective: at T = 0.7
the same sampled token gets a ∇log π that ignores the 1/T sharpening, and top-p's excluded tail still pulls on
the gradient. Greedy rollouts (T = 0, the paper's recipe) have no sampling distribution: they keep the paper's
log π at T = 1. The KL term always compares the untempered policies.

Low-precision rollouts (int8 / bf16, `--rollout-precision`): the tokens were sampled from π_rollout, the
low-precision model's sampling distribution, while the gradient is taken through the fp32 π_train. Each token's
term is weighted by the truncated importance ratio w_t = min(π_train(y_t) / π_rollout(y_t), C), detached
(`truncated_ratio`; Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL training",
as RL libraries do for vLLM rollouts): per token, the sample of π_rollout is reweighted to one of π_train, so
the gradient estimates π_train's own policy gradient (the prefixes' mismatch is left uncorrected, as there); the
cap C bounds the variance of tokens that π_rollout found far less likely than π_train does, at the price of a
small bias there. Both log-probs are of the sampling distribution (temperature, nucleus) the loss uses. Exact
rollouts have w = 1 and skip it: the loss is the one above, bit for bit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import ADVANTAGE_NORMS, BASELINES


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log π(token) per position, and the full log-softmax. logits (N, T, V), tokens (N, T) → (N, T), (N, T, V)."""
    logp = F.log_softmax(logits.float(), dim=-1)  # (N, T, V)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), logp  # (N, T), (N, T, V)


def sampling_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float,
                      top_p: float = 1.0) -> torch.Tensor:
    """log π_sample(token) per position under the rollout's sampling distribution. logits (N, T, V), tokens
    (N, T) → (N, T).

    π_sample = softmax(logits / T) restricted to the nucleus and renormalised, the nucleus being the engine's
    (`generation.sampling.next_tokens`): the smallest top set whose mass reaches `top_p`, i.e. a token is kept
    while the mass before it is below `top_p`. Membership is treated as a constant (it is a step function of
    the logits). The sampled token is always counted in (float rounding between the engine's forward and this
    teacher-forced one can move a boundary token out). `temperature` 0 (greedy): plain log π at T = 1.
    """
    if temperature <= 0:
        return token_logprobs(logits, tokens)[0]
    z = logits.float() / temperature  # (N, T, V)
    tok_z = z.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (N, T)
    if top_p >= 1.0:
        return tok_z - torch.logsumexp(z, dim=-1)
    with torch.no_grad():
        sorted_z, order = z.sort(dim=-1, descending=True)  # (N, T, V)
        probs = torch.softmax(sorted_z, dim=-1)
        keep_sorted = (probs.cumsum(-1) - probs) < top_p  # (N, T, V), never empty (the top token has 0 before it)
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)  # back to vocabulary order
        keep.scatter_(-1, tokens.unsqueeze(-1), True)
    nucleus = torch.logsumexp(z.masked_fill(~keep, float("-inf")), dim=-1)  # (N, T)
    return tok_z - nucleus


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Leave-one-out advantage within each group: A_i = r_i − mean_{j≠i} r_j. rewards (P, G) → (P, G).

    G = 1 has no other sample to compare with: the advantage is the reward itself (the paper's recipe).
    """
    P, G = rewards.shape
    if G == 1:
        return rewards.clone()
    others = (rewards.sum(dim=1, keepdim=True) - rewards) / (G - 1)  # (P, G)
    return rewards - others


def advantages(rewards: torch.Tensor, baseline: str = "loo", norm: str = "none") -> torch.Tensor:
    """Per-sample advantages from rewards grouped by prompt. rewards (P, G) → (P, G).

    `baseline`: "loo" = `rloo_advantages`; "none" = the raw reward (SPEC §2, the paper's REINFORCE: a group
    whose samples all agree still pushes on their log-probs). A baseline leaves the *expected* gradient as it is
    and only changes its variance. `norm`: "std" divides each group's (loo) advantages by the standard deviation
    of its rewards (GRPO's scaling), so that a prompt whose G samples hold a single success weighs as much as one
    split half and half; a group whose rewards are all equal has advantage 0 either way.
    """
    if baseline not in BASELINES or norm not in ADVANTAGE_NORMS:
        raise ValueError(f"baseline must be one of {BASELINES} and norm one of {ADVANTAGE_NORMS}")
    if baseline == "none":
        if norm != "none":
            raise ValueError("advantage normalisation needs the leave-one-out baseline")
        return rewards.clone()
    adv = rloo_advantages(rewards)  # (P, G)
    if norm == "std" and rewards.shape[1] > 1:
        std = rewards.std(dim=1, unbiased=False, keepdim=True)  # (P, 1)
        adv = torch.where(std > 0, adv / std.clamp(min=1e-8), torch.zeros_like(adv))
    return adv


def kl_to_base(logp: torch.Tensor, base_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence Σ_t KL(π_θ(·|t) ‖ π_base(·|t)). logp, base_logp (N, T, V) log-softmaxes; mask (N, T) → (N,)."""
    per_token = (logp.exp() * (logp - base_logp)).sum(-1)  # (N, T)
    return (per_token * mask).sum(-1)  # (N,)


def truncated_ratio(logp_train: torch.Tensor, logp_rollout: torch.Tensor, mask: torch.Tensor,
                    cap: float) -> tuple[torch.Tensor, dict]:
    """Per-token truncated importance weights min(exp(logp_train − logp_rollout), cap), detached, and their sums
    for the metrics: {"tis_sum", "tis_max", "tis_truncated" (tokens whose ratio exceeded cap), "tis_tokens"} over
    the real tokens. logp_train, logp_rollout, mask (N, T) → (N, T) (1 on padding)."""
    ratio = torch.exp(logp_train.detach().float() - logp_rollout.float())  # (N, T)
    real = mask > 0
    ratio = torch.where(real, ratio, torch.ones_like(ratio))
    on = ratio[real]
    metrics = {"tis_sum": float(on.sum()), "tis_max": float(on.max()) if on.numel() else 1.0,
               "tis_truncated": float((on > cap).sum()), "tis_tokens": float(on.numel())}
    return ratio.clamp(max=cap), metrics


def reinforce_loss(token_logp: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor, normalizer: float,
                   kl: torch.Tensor | None = None, kl_coef: float = 0.0,
                   weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """SPEC §2: loss = Σ_i [−A_i · Σ_t w_it log π(ŷ_it) + λ·KL_i] / normalizer, w = 1 unless `weights` is given
    (the truncated importance weights of low-precision rollouts, `truncated_ratio`).

    token_logp (N, T), mask (N, T), advantages (N,), kl (N,) or None, weights (N, T) detached or None. Returns
    (loss, metrics of this part; `logp` is the unweighted Σ_t log π).
    """
    seq_logp = (token_logp * mask).sum(-1)  # (N,)
    if weights is None:
        loss = -(advantages * seq_logp).sum()
    else:
        loss = -(advantages * (weights * token_logp * mask).sum(-1)).sum()
    metrics = {"logp": float(seq_logp.detach().sum())}
    if kl is not None:
        loss = loss + kl_coef * kl.sum()
        metrics["kl"] = float(kl.detach().sum())
    return loss / normalizer, metrics


def sft_loss(token_logp: torch.Tensor, mask: torch.Tensor, normalizer: float) -> tuple[torch.Tensor, dict]:
    """Next-token prediction on the target tokens: −Σ log π(y_t) / normalizer (the global target-token count)."""
    nll = -(token_logp * mask).sum()
    return nll / normalizer, {"nll": float(nll.detach())}
