"""Packing (prompt, completion) pairs: padded batches give each sequence's own log-probs."""

import torch

from transformer_squared.testing import tiny_model
from transformer_squared.training.losses import token_logprobs
from transformer_squared.training.sequences import completion_logits, micro_batches, pack

PROMPTS = [[5, 17, 3, 99], [7, 7, 60, 2, 11, 120, 33], [9]]
COMPLETIONS = [[4, 8, 15], [16], [23, 42, 1, 2, 3]]


def alone(model, prompt, completion):
    """log π(completion | prompt) token by token, from an unpadded forward pass."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1]  # (Tc, V)
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion)[:, None])[:, 0]


def test_pack_layout_left_pads_prompts_and_right_pads_completions():
    p = pack(PROMPTS, COMPLETIONS, pad_id=0, index=[0, 1])
    assert p.input_ids.tolist() == [[0, 0, 0, 5, 17, 3, 99, 4, 8, 15], [7, 7, 60, 2, 11, 120, 33, 16, 0, 0]]
    assert p.position_ids[0].tolist() == [0, 0, 0, 0, 1, 2, 3, 4, 5, 6]
    assert p.mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert p.tokens.tolist() == [[4, 8, 15], [16, 0, 0]]


def test_padded_batch_gives_each_sequence_its_own_logprobs():
    model = tiny_model("llama")
    p = pack(PROMPTS, COMPLETIONS, pad_id=0, index=[0, 1, 2])
    with torch.no_grad():
        tok, _ = token_logprobs(completion_logits(model, p), p.tokens)
    for row, i in enumerate(p.index):
        n = len(COMPLETIONS[i])
        torch.testing.assert_close(tok[row, :n], alone(model, PROMPTS[i], COMPLETIONS[i]), atol=1e-5, rtol=1e-5)


def test_micro_batches_cover_every_sequence_once_within_the_budget():
    prompts = [[1] * n for n in (3, 50, 7, 20, 20, 4)]
    completions = [[2] * n for n in (5, 1, 30, 2, 9, 0)]
    groups = micro_batches(prompts, completions, max_tokens=64)
    assert sorted(i for g in groups for i in g) == list(range(6))
    for g in groups:
        padded = len(g) * (max(len(prompts[i]) for i in g) + max(max(len(completions[i]) for i in g), 1))
        assert padded <= 64 or len(g) == 1
    assert len(micro_batches(prompts, completions, max_tokens=10_000)) == 1


def test_shared_prompt_pass_gives_the_same_logits_and_gradients():
    model = tiny_model("llama")
    G = 2
    prompts = [PROMPTS[0]] * G + [PROMPTS[1]] * G  # runs of G sharing a prompt, as rollouts produce them
    completions = [[4, 8, 15], [16], [23, 42, 1, 2, 3], [9, 9]]
    p = pack(prompts, completions, pad_id=0, index=[0, 1, 2, 3])
    grads = []
    for group in (1, G):
        model.zero_grad()
        tok, _ = token_logprobs(completion_logits(model, p, group), p.tokens)
        (tok * p.mask).sum().backward()
        grads.append((tok.detach(), [q.grad.clone() for q in model.parameters()]))
    torch.testing.assert_close(grads[1][0], grads[0][0], atol=1e-5, rtol=1e-5)
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)


def test_micro_batches_keep_prompt_groups_together():
    prompts = [[1] * n for n in (3, 3, 50, 50, 7, 7)]
    completions = [[2] * n for n in (5, 1, 30, 2, 9, 0)]
    groups = micro_batches(prompts, completions, max_tokens=60, group=2)
    assert sorted(i for g in groups for i in g) == list(range(6))
    for g in groups:
        assert all(g[k] // 2 == g[k + 1] // 2 for k in range(0, len(g), 2))
