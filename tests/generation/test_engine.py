"""The generation engine: greedy == `model.generate`, sampling, stop strings, EOS, callbacks, batching."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from transformer_squared.errors import T2Error
from transformer_squared.generation import (Completion, Engine, SamplingParams, VLLMEngine, chat_prompt_ids,
                                            encode_prompt)
from transformer_squared.generation.fast_llama import fast_path_problem
from transformer_squared.testing import tiny_model

GREEDY_ARCHS = ("llama", "mistral", "qwen2", "gemma", "gpt2", "phi", "llava")


@pytest.fixture(autouse=True)
def one_thread():
    """These tests check outputs, not speed. On a shared, oversubscribed CPU torch's OpenMP threads wait for
    each other at every op: measured here, this file took 167 s with 2 threads and 13 s with 1."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class CharTokenizer:
    """One character per token (id i <-> chr(0x100 + i)), so decoding is exact and stop strings are easy."""

    eos_token_id = 2
    pad_token_id = 0
    bos_token_id = 1
    bos_token = chr(0x101)
    chat_template = None

    def __call__(self, text, add_special_tokens=True):
        ids = [ord(c) - 0x100 for c in text]
        return {"input_ids": ([self.bos_token_id] if add_special_tokens else []) + ids}

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(0x100 + i) for i in ids)

    def batch_decode(self, rows, skip_special_tokens=False):
        return [self.decode(r) for r in rows]


def random_prompts(lengths, seed=0, vocab=120):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


def reference(model, prompt, n):
    """`model.generate` greedy on one prompt alone, unpadded: the new ids (stops after EOS, like the engine)."""
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("arch", GREEDY_ARCHS)
def test_greedy_matches_generate(arch):
    model = tiny_model(arch)
    prompts = random_prompts([5, 11, 2, 8])
    runners = ("fast", "hf") if fast_path_problem(model, 64) is None else ("hf",)
    refs = [reference(model, p, 12) for p in prompts]
    for runner in runners:
        engine = Engine(model, None, max_batch_size=3, runner=runner)
        outs = engine.generate(prompts, SamplingParams(max_new_tokens=12))
        assert [o.token_ids for o in outs] == refs, runner
        for o, p in zip(outs, prompts):
            assert o.prompt_tokens == len(p)
            assert o.finish_reason == ("stop" if o.token_ids[-1] in engine.eos else "length")


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_repeated_prompts_share_one_prefill(arch):
    model = tiny_model(arch)
    a, b = random_prompts([6, 6], seed=3)
    prompts = [a, b, a, a, b]  # RL-style repeats, interleaved
    engine = Engine(model, None)
    outs = engine.generate(prompts, SamplingParams(max_new_tokens=10))
    assert engine.stats.prefill_rows == 2
    assert [o.token_ids for o in outs] == [reference(model, p, 10) for p in prompts]
    sampled = engine.generate(prompts, SamplingParams(max_new_tokens=10, temperature=1.0, seed=0))
    assert len({tuple(o.token_ids) for o in sampled}) > 2  # repeats still get their own samples
    # With per-row callbacks every row is prefilled (its state may differ).
    engine.generate(prompts, SamplingParams(max_new_tokens=2), on_batch_start=lambda i: None)
    assert engine.stats.prefill_rows == 5


def test_fast_path_is_used_for_llama_family_only():
    assert fast_path_problem(tiny_model("llama"), 64) is None
    assert fast_path_problem(tiny_model("qwen2"), 64) is None
    assert "gpt2" in fast_path_problem(tiny_model("gpt2"), 64)
    with pytest.raises(T2Error, match="fast generation path"):
        Engine(tiny_model("gpt2"), None, runner="fast").generate([[5, 6]], SamplingParams(max_new_tokens=2))


def test_eos_is_kept_in_ids_and_dropped_from_text():
    model = tiny_model("llama")
    prompts = random_prompts([4, 7, 9, 3])
    free = Engine(model, CharTokenizer(), runner="fast")
    free.eos = set()
    base = free.generate(prompts, SamplingParams(max_new_tokens=12))
    eos = base[0].token_ids[5]  # a token the first row samples at step 5
    model.generation_config.eos_token_id = eos
    outs = Engine(model, CharTokenizer()).generate(prompts, SamplingParams(max_new_tokens=12))
    for b, o in zip(base, outs):
        if eos in b.token_ids:
            k = b.token_ids.index(eos) + 1
            assert o.token_ids == b.token_ids[:k] and o.finish_reason == "stop"
            assert o.text == CharTokenizer().decode(b.token_ids[: k - 1])
        else:
            assert o.token_ids == b.token_ids and o.finish_reason == "length"
    assert outs[0].finish_reason == "stop"


def test_stop_strings_cut_text_and_keep_ids():
    model = tiny_model("llama")
    tok = CharTokenizer()
    prompts = random_prompts([6, 3, 10])
    engine = Engine(model, tok)
    engine.eos = set()
    base = engine.generate(prompts, SamplingParams(max_new_tokens=20))
    stop = base[1].text[6:8]  # two characters the second row generates at steps 6-7
    outs = engine.generate(prompts, SamplingParams(max_new_tokens=20, stop=(stop, "unseen")))
    for b, o in zip(base, outs):
        cut = b.text.find(stop)
        if cut < 0:
            assert o.text == b.text and o.finish_reason == "length" and o.token_ids == b.token_ids
        else:
            assert o.text == b.text[:cut] and o.finish_reason == "stop"
            assert o.token_ids == b.token_ids[: cut + len(stop)]  # up to the token completing the stop string
    assert outs[1].finish_reason == "stop"


def test_sampling_is_seeded_and_top_p_tiny_is_greedy():
    model = tiny_model("llama")
    engine = Engine(model, None, max_batch_size=4)
    engine.eos = set()
    prompts = random_prompts([5, 8, 3, 6, 9])
    sample = lambda seed, **kw: [o.token_ids for o in engine.generate(
        prompts, SamplingParams(max_new_tokens=12, temperature=1.0, seed=seed, **kw))]
    assert sample(1) == sample(1)
    assert sample(1) != sample(2)
    greedy = [o.token_ids for o in engine.generate(prompts, SamplingParams(max_new_tokens=12))]
    assert sample(3, top_p=1e-6) == greedy
    # Repeated prompts in one call get different samples (RL groups rely on it).
    outs = engine.generate([prompts[0]] * 4, SamplingParams(max_new_tokens=12, temperature=1.0, seed=0))
    assert len({tuple(o.token_ids) for o in outs}) > 1


def test_top_p_keeps_the_smallest_set_reaching_p():
    from transformer_squared.generation.sampling import next_tokens

    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log().repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    drawn = next_tokens(logits, SamplingParams(temperature=1.0, top_p=0.7), g)
    counts = torch.bincount(drawn, minlength=4).float() / len(drawn)
    assert counts[2:].sum() == 0  # 0.5 + 0.3 >= 0.7: tokens 2 and 3 are cut
    assert abs(counts[0] - 0.5 / 0.8) < 0.05
    # When the first 64 candidates hold less than top_p, the full sort applies the same rule.
    flat = -0.001 * torch.arange(200.0)  # nearly uniform: ~100 tokens make half the mass
    probs = flat.softmax(-1)
    n_keep = int(((probs.cumsum(-1) - probs) < 0.5).sum())
    drawn = next_tokens(flat.repeat(4000, 1), SamplingParams(temperature=1.0, top_p=0.5), g)
    assert n_keep > 64 and drawn.max() == n_keep - 1 and len(drawn.unique()) == n_keep
    # Temperature: softmax(logits / T).
    two = torch.tensor([[0.0, float(torch.tensor(3.0).log())]])
    drawn = next_tokens(two.repeat(4000, 1), SamplingParams(temperature=0.5), g)
    assert abs(drawn.float().mean() - 0.9) < 0.03  # p = 9 / (1 + 9)


class RowShift(nn.Module):
    """Wraps a projection; adds a per-row vector chosen by `rows` (positions into the prompt list), like SVF
    per-row experts. Fails if its row state does not match the batch it is called on."""

    def __init__(self, base: nn.Module, n_prompts: int, width: int):
        super().__init__()
        self.base = base
        self.shift = torch.randn(n_prompts, width, generator=torch.Generator().manual_seed(0)) * 2.0
        self.rows: torch.Tensor | None = None

    def forward(self, x):
        assert x.shape[0] == len(self.rows), "per-row state out of step with the batch"
        return self.base(x) + self.shift[self.rows][:, None, :]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_callbacks_describe_the_rows(arch):
    model = tiny_model(arch)
    prompts = random_prompts([5, 9, 3, 7, 12, 4])
    if arch == "llama":
        parent, name, width = model.model.layers[0].mlp, "down_proj", model.config.hidden_size
    else:
        parent, name, width = model.transformer.h[0].mlp, "c_proj", model.config.n_embd
    shift = RowShift(getattr(parent, name), len(prompts), width)
    setattr(parent, name, shift)

    def alone(i):
        shift.rows = torch.tensor([i])
        return reference(model, prompts[i], 14)

    # An EOS that rows hit at different steps, so finished rows get dropped mid-batch: the commonest token
    # of the first steps (found with the engine itself, one prompt at a time, EOS off).
    free = Engine(model, None, max_batch_size=1)
    free.eos = set()
    free = free.generate(prompts, SamplingParams(max_new_tokens=10), on_batch_start=lambda i: setattr(shift, "rows", i))
    counts = torch.bincount(torch.tensor([t for o in free for t in o.token_ids[1:9]]))
    model.generation_config.eos_token_id = int(counts.argmax())
    refs = [alone(i) for i in range(len(prompts))]
    assert len({len(r) for r in refs}) > 1

    calls = []

    def on_batch_start(indices):
        calls.append(("start", indices.tolist()))
        shift.rows = indices

    def on_reindex(keep):
        calls.append(("keep", keep.tolist()))
        shift.rows = shift.rows[keep]

    engine = Engine(model, None, max_batch_size=4)
    outs = engine.generate(prompts, SamplingParams(max_new_tokens=14),
                           on_batch_start=on_batch_start, on_reindex=on_reindex)
    assert [o.token_ids for o in outs] == refs
    assert engine.stats.new_tokens == sum(len(r) for r in refs)
    starts = [c[1] for c in calls if c[0] == "start"]
    assert {i for s in starts for i in s} == set(range(len(prompts))) and max(map(len, starts)) <= 4
    assert any(c[0] == "keep" for c in calls)
    first = set(sorted(range(len(prompts)), key=lambda i: len(prompts[i]))[:4])  # the shortest prompts start
    mixed = [s for s in starts if first & set(s) and set(s) - first]
    if arch == "llama":  # continuous batching: later prompts join while the first ones still run
        assert mixed and engine.stats.batches > 2
    else:  # the HF runner takes rows only into an empty batch: static batches of 4 and 2
        assert not mixed and [len(s) for s in starts] == [4, 2] and engine.stats.batches == 2


def test_order_preserved_across_batches_and_text_prompts():
    model = tiny_model("llama")
    tok = CharTokenizer()
    prompts = random_prompts([9, 2, 5, 13, 1, 7, 4])
    one = Engine(model, tok, max_batch_size=1).generate(prompts, SamplingParams(max_new_tokens=6))
    many = Engine(model, tok, max_batch_size=3).generate(prompts, SamplingParams(max_new_tokens=6))
    assert [o.token_ids for o in one] == [o.token_ids for o in many]
    # Text prompts: the tokenizer's BOS is added once.
    text = tok.decode(prompts[0])
    assert encode_prompt(tok, text) == [1] + prompts[0]
    assert encode_prompt(tok, tok.bos_token + text) == [1] + prompts[0]
    by_text = Engine(model, tok).generate([text], SamplingParams(max_new_tokens=6))[0]
    by_ids = Engine(model, tok).generate([[1] + prompts[0]], SamplingParams(max_new_tokens=6))[0]
    assert by_text == by_ids and isinstance(by_text, Completion)


def test_training_mode_is_restored_and_errors_are_one_line():
    model = tiny_model("gpt2").train()
    Engine(model, None).generate([[4, 5, 6]], SamplingParams(max_new_tokens=3))
    assert model.training
    for bad in (dict(max_new_tokens=0), dict(temperature=-1.0), dict(top_p=0.0), dict(stop=("",))):
        with pytest.raises(T2Error):
            SamplingParams(**bad)
    with pytest.raises(T2Error, match="empty prompt"):
        Engine(model, None).generate([[]], SamplingParams())
    with pytest.raises(T2Error, match="stop strings need a tokenizer"):
        Engine(model, None).generate([[3]], SamplingParams(stop=("x",)))


def test_vllm_backend_missing_is_a_t2error():
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed; the backend itself is untested here")
    with pytest.raises(T2Error, match="pip install vllm"):
        VLLMEngine("/nonexistent")


def test_real_model_greedy_matches_generate(embedded):
    """SmolLM2-135M-Instruct: chat prompts of different lengths in one batch, 32 tokens each (~10 s)."""
    model, tok = embedded.model, embedded.tokenizer
    convs = [[{"role": "user", "content": q}] for q in
             ("What is the capital of France?", "Write a haiku about the sea.", "What is 17*23? Think step by step.")]
    ids = [chat_prompt_ids(tok, c) for c in convs]
    assert ids[0][-4:] == tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    outs = Engine(model, tok).generate_chat(convs, SamplingParams(max_new_tokens=32))
    for p, o in zip(ids, outs):
        assert o.token_ids == reference(model, p, 32)
        assert o.prompt_tokens == len(p) and "<|im_end|>" not in o.text
    assert "Paris" in outs[0].text


def test_length_groups_bound_the_padding():
    from transformer_squared.generation.fast_llama import _length_groups

    assert _length_groups([5]) == [[0]]
    assert _length_groups([7, 7, 7]) == [[0, 1, 2]]
    assert _length_groups([100, 10, 101, 13]) == [[1], [3], [0, 2]]  # 10 and 13: padding 3 > 10% of 23
    assert _length_groups([100, 10, 101, 13], waste=0.2) == [[1, 3], [0, 2]]
    groups = _length_groups([30, 5, 17, 18, 40, 41, 2])
    assert sorted(b for g in groups for b in g) == list(range(7))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_prefill_by_length_groups_equals_one_padded_batch(arch):
    """Each group padded to its own longest prompt gives the same logits, now and at the next steps, as the
    whole batch padded to the longest."""
    from transformer_squared.generation.fast_llama import LlamaRunner

    model = tiny_model(arch)
    engine = Engine(model, None)
    ids, mask = engine.left_pad(random_prompts([3, 14, 4, 13, 9]))
    whole, split = LlamaRunner(model), LlamaRunner(model)
    a, b = whole.start(ids, mask, 6), split.start(ids, mask, 6, split=True)
    for _ in range(5):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
        token = a.argmax(-1)
        a, b = whole.step(token), split.step(token)
    assert torch.isfinite(split.kv[:, :, :, :, : split.length]).all()  # slots past the length are not written yet


def test_no_prompts_no_work():
    engine = Engine(tiny_model("llama"), None)
    assert engine.generate([], SamplingParams(max_new_tokens=4)) == []
    assert engine.stats.prompts == 0 and engine.stats.batches == 0
