"""Packing (prompt, completion) pairs: padded batches give each sequence's own log-probs."""

import pytest
import torch

from transformer_squared.testing import tiny_model
from transformer_squared.training import sequences
from transformer_squared.training.losses import sampling_logprobs, token_logprobs
from transformer_squared.training.sequences import completion_logits, completion_logprobs, micro_batches, pack

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


@pytest.mark.parametrize("group", [1, 2])
@pytest.mark.parametrize("temperature,top_p", [(0.0, 1.0), (1.0, 1.0), (0.7, 0.9)])
def test_chunked_completion_logprobs_equal_the_full_logits_path_and_its_gradients(monkeypatch, group, temperature,
                                                                                   top_p):
    model = tiny_model("llama")
    prompts = [PROMPTS[0]] * 2 + [PROMPTS[1]] * 2
    completions = [[4, 8, 15], [16], [23, 42, 1, 2, 3], [9, 9]]
    p = pack(prompts, completions, pad_id=0, index=[0, 1, 2, 3])
    monkeypatch.setattr(sequences, "CHUNK_ELEMENTS", 3 * model.config.vocab_size)  # 3 positions a chunk: 7 chunks
    out = []
    for fn in (lambda: sampling_logprobs(completion_logits(model, p, group), p.tokens, temperature, top_p),
               lambda: completion_logprobs(model, p, group, temperature, top_p)):
        model.zero_grad()
        tok = fn()
        (tok * p.mask * torch.linspace(-1, 2, tok.numel()).view_as(tok)).sum().backward()
        out.append((tok.detach(), [q.grad.clone() for q in model.parameters()]))
    assert sequences._SPLIT_OK[model] is True  # the chunked path ran
    torch.testing.assert_close(out[1][0], out[0][0], atol=1e-5, rtol=1e-5)
    for a, b in zip(out[0][1], out[1][1]):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)


class ScaledLogits(torch.nn.Module):
    """A model whose logits are not head(decoder(x)): they are doubled (as soft-capping or logit scales do)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def get_decoder(self):
        return self.inner.get_decoder()

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def forward(self, **kw):
        out = self.inner(**kw)
        out.logits = out.logits * 2
        return out


def test_a_model_whose_logits_are_not_the_heads_output_takes_the_full_logits_path():
    model = ScaledLogits(tiny_model("llama"))
    p = pack(PROMPTS, COMPLETIONS, pad_id=0, index=[0, 1, 2])
    with torch.no_grad():
        got = completion_logprobs(model, p, 1, 1.0)
        want = sampling_logprobs(completion_logits(model, p), p.tokens, 1.0)
    assert sequences._SPLIT_OK[model] is False
    torch.testing.assert_close(got, want)


def test_lora_with_dropout_takes_the_chunked_path_and_draws_the_same_dropout_masks():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model("llama"), LoraConfig(r=2, lora_alpha=4, lora_dropout=0.5,
                                                           target_modules=["q_proj", "v_proj"],
                                                           init_lora_weights=False))  # B != 0: dropout matters
    model.train()
    p = pack(PROMPTS, COMPLETIONS, pad_id=0, index=[0, 1, 2])
    torch.manual_seed(0)
    want = sampling_logprobs(completion_logits(model, p), p.tokens, 1.0)
    torch.manual_seed(0)
    got = completion_logprobs(model, p, 1, 1.0)  # the check runs in eval mode and leaves the RNG alone
    assert sequences._SPLIT_OK[model] is True and model.training
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
