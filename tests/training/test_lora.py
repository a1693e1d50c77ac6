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


def test_a_saved_lora_expert_evaluates_like_the_merged_policy(tmp_path):
    """`t2 eval --expert DIR` of a LoRA expert (training.lora.evaluate_lora) scores what training's merged
    policy generates, through the same evaluation path (so its records pair with the base's in t2 compare)."""
    import copy

    import pytest

    from transformer_squared.adapted import base_meta
    from transformer_squared.errors import T2Error
    from transformer_squared.evaluation import EvalConfig, evaluate
    from transformer_squared.training.lora import evaluate_lora, is_lora_expert

    from .tinylm import tiny_task

    task = tiny_task(tmp_path)
    config = EvalConfig(task="custom", split="test", max_new_tokens=4)
    lm = tiny_lm()
    pristine = copy.deepcopy(lm)
    pol = LoRAPolicy(lm.model, dropout=0.0)
    with torch.no_grad():
        for p in pol.parameters():
            p.add_(torch.randn_like(p) * 0.5)  # lora_B starts at 0: move it, or the test proves nothing
    meta = {"name": "sums-lora", "base_model": base_meta(pristine, "mlp")["base_model"]}
    pol.save(tmp_path / "expert", meta)
    with pol.generating():
        want, want_records = evaluate(pol.generation_model, lm.tokenizer, config, task=task, progress=False)
    _, base_records = evaluate(pristine.model, pristine.tokenizer, config, task=task, progress=False)
    outputs = lambda records: [r["output"] for r in records]  # noqa: E731
    assert outputs(want_records) != outputs(base_records)  # the adapter changes what is generated

    assert is_lora_expert(tmp_path / "expert") and not is_lora_expert(tmp_path)
    got, records = evaluate_lora(copy.deepcopy(pristine), tmp_path / "expert", config, task=task, progress=False)
    assert outputs(records) == outputs(want_records)
    assert (got["correct"], got["n"]) == (want["correct"], want["n"])
    assert got["config"]["expert_kind"] == "lora"

    other = tiny_lm(seed=1)  # other weights of the same shapes: refused unless transfer is asked for
    with pytest.raises(T2Error, match="trained on other weights"):
        evaluate_lora(other, tmp_path / "expert", config, task=task, progress=False)
