"""LoRAPolicy: starts as the identity, merges for generation without drifting, and trains only the adapter."""

import torch

from transformer_squared.training.lora import LoRAPolicy

from .tinylm import tiny_lm

IDS = torch.tensor([[5, 17, 3, 99, 42, 8, 1], [7, 7, 60, 2, 11, 120, 33]])


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_lora_starts_as_the_identity():
    lm = tiny_lm()
    base = logits(lm.model)
    pol = LoRAPolicy(lm.model)
    assert torch.equal(logits(pol.model), base)
    assert sum(p.numel() for p in pol.parameters()) == 2 * 2 * 16 * 48 + 2 * 16 * (48 + 24)  # q (48→48), v (48→24)


def test_merged_generation_equals_the_adapter_and_restores_exactly():
    lm = tiny_lm()
    base = logits(lm.model)
    pol = LoRAPolicy(lm.model, dropout=0.0)
    with torch.no_grad():
        for p in pol.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    adapted = logits(pol.model)
    assert (adapted - base).abs().max() > 1e-3
    weights = {n: p.detach().clone() for n, p in pol.generation_model.named_parameters()}
    for _ in range(3):
        with pol.generating():
            torch.testing.assert_close(logits(pol.generation_model), adapted, atol=1e-5, rtol=1e-5)
    assert all(torch.equal(p, weights[n]) for n, p in pol.generation_model.named_parameters()), "merge drifted"
    with pol.reference():
        assert torch.equal(logits(pol.model), base)
    pol.close()
    assert torch.equal(logits(lm.model), base)
    assert not any("lora" in n for n, _ in lm.model.named_parameters())


def test_only_the_adapter_gets_gradients():
    lm = tiny_lm()
    pol = LoRAPolicy(lm.model, dropout=0.0)
    with pol.grad_pass():
        pol.model(input_ids=IDS).logits.logsumexp(-1).sum().backward()
    grads = {n: p.grad for n, p in pol.peft.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n for n in grads)
    assert any(g.abs().max() > 0 for n, g in grads.items() if "lora_B" in n)  # B = 0 at init, A's grad is 0


def test_shared_prompt_pass_works_through_peft():
    from transformer_squared.training.sequences import completion_logits, pack

    pol = LoRAPolicy(tiny_lm().model, dropout=0.0)
    with torch.no_grad():
        for p in pol.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    prompts = [[5, 17, 3, 99]] * 2 + [[7, 7, 60, 2, 11]] * 2
    packed = pack(prompts, [[4, 8, 15], [16], [23, 42, 1, 2], [9]], pad_id=0, index=[0, 1, 2, 3])
    with torch.no_grad():
        torch.testing.assert_close(completion_logits(pol.model, packed, 2), completion_logits(pol.model, packed, 1),
                                   atol=1e-5, rtol=1e-5)
