"""The fast runner's CPU kernels (generation/cpu_kernels.py) against torch's ops, and the runner's use of them."""

import shutil

import pytest
import torch
import torch.nn.functional as F

from transformer_squared.generation import Engine, SamplingParams
from transformer_squared.generation import cpu_kernels, fast_llama
from transformer_squared.generation.fast_llama import LlamaRunner, _rope, _signed_sin
from transformer_squared.testing import tiny_model


def kernels():
    """The built ops; skip where this machine cannot build them (not x86 AVX2, no compiler or ninja). On a
    machine that should build them, a failed build fails the test instead of falling back quietly."""
    problem = cpu_kernels._platform_problem()
    if problem is None and (shutil.which("ninja") is None or shutil.which("c++") is None):
        problem = "no C++ compiler or ninja"
    if problem is not None:
        pytest.skip(problem)
    ops = cpu_kernels.cpu_kernels()
    assert ops is not None, cpu_kernels.kernel_problem()
    return ops


@pytest.mark.parametrize("n, Hkv, R, D, L, t", [
    (1, 1, 1, 8, 4, 0),  # the first slot: attends to the new key alone
    (3, 2, 2, 12, 20, 7),  # head size not a multiple of the vector width
    (5, 3, 3, 64, 40, 33),  # SmolLM2's heads
    (2, 2, 7, 64, 24, 19),  # 7 query heads per KV head: blocks of 3, 3 and 1
    (4, 1, 4, 40, 9, 8),  # the last slot of the cache
])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("rotate", [False, True])
def test_kernel_matches_sdpa_and_writes_the_new_slot(n, Hkv, R, D, L, t, masked, rotate):
    op = kernels().decode_attention
    torch.manual_seed(n + t)
    k_cache, v_cache = torch.randn(n, Hkv, L, D), torch.randn(n, Hkv, L, D)
    qk = torch.randn(n, Hkv * R + Hkv, D)  # q and k as the runner's fused q|k|v gives them: rows strided
    q, k = qk[:, : Hkv * R].view(n, Hkv, R, D), qk[:, Hkv * R :]
    v = torch.randn(n, 1, 2 * Hkv * D)[:, 0, Hkv * D :].view(n, Hkv, D)
    mask = torch.zeros(n, L)
    mask[0, : t // 2] = float("-inf")
    mask[-1, 1 : t] = float("-inf")
    cos, sin = torch.randn(n, D), _signed_sin(torch.randn(n, D))
    want_q, want_k, want_v = q, k_cache.clone(), v_cache.clone()
    want_k[:, :, t], want_v[:, :, t] = k, v
    if rotate:
        want_q = _rope(q, cos[:, None, None], sin[:, None, None])
        want_k[:, :, t] = _rope(k, cos[:, None], sin[:, None])
    want = F.scaled_dot_product_attention(want_q, want_k[:, :, : t + 1], want_v[:, :, : t + 1], scale=0.3,
                                          attn_mask=mask[:, None, None, : t + 1] if masked else None)
    got = op(q, k, v, k_cache, v_cache, t, mask if masked else None, 0.3, *((cos, sin) if rotate else ()))
    assert torch.equal(k_cache, want_k) and torch.equal(v_cache, want_v)  # slot t written (bit for bit), only it
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_kernel_refuses_what_it_cannot_run():
    op = kernels().decode_attention
    q, kv = torch.randn(2, 1, 1, 8), torch.randn(2, 1, 4, 8)
    with pytest.raises(RuntimeError, match="slot t outside the cache"):
        op(q, q[:, :, 0], q[:, :, 0], kv, kv.clone(), 4, None, 1.0)
    with pytest.raises(RuntimeError, match="fp32"):
        op(q.double(), q[:, :, 0], q[:, :, 0], kv, kv.clone(), 1, None, 1.0)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_runner_steps_equal_with_the_kernels_and_with_torch_ops(arch, monkeypatch):
    """A padded batch (rows of different lengths) decodes to the same logits, up to rounding, through the kernels
    and through torch's ops (SDPA); the greedy ids of the engine match as well."""
    kernels()
    model = tiny_model(arch)
    engine = Engine(model, None)
    ids, mask = engine.left_pad([[3, 9, 4, 7, 21, 5], [8, 2], [30, 31, 32, 33]])

    def run():
        runner = LlamaRunner(model)
        logits = [runner.start(ids, mask, 8)]
        for _ in range(6):
            logits.append(runner.step(logits[-1].argmax(-1)))
        return torch.stack(logits)

    with_kernel = run()
    greedy = [o.token_ids for o in engine.generate([[3, 9, 4, 7, 21, 5], [8, 2]], SamplingParams(max_new_tokens=8))]
    monkeypatch.setattr(fast_llama, "cpu_kernels", lambda: None)
    torch.testing.assert_close(with_kernel, run(), rtol=1e-4, atol=1e-4)
    assert [o.token_ids for o in engine.generate([[3, 9, 4, 7, 21, 5], [8, 2]],
                                                 SamplingParams(max_new_tokens=8))] == greedy


@pytest.mark.parametrize("shape, size", [((5, 1, 160), 80), ((3, 7, 3072), 1536), ((4, 70), 35), ((2, 2, 40), 17)])
def test_silu_mul_has_torchs_bits(shape, size):
    """silu(gate) * up as torch computes it on the halves of the fused product: vectorised and scalar elements
    alike (sizes not a multiple of 16 leave a scalar tail per row; 17 of 40: the up half is not the rest)."""
    op = kernels().silu_mul
    torch.manual_seed(size)
    y = torch.randn(shape) * 4
    y.view(-1)[:7] = torch.tensor([0.0, -0.0, 88.0, -88.0, 1e-8, -104.0, float("inf")])
    want = F.silu(y[..., :size]) * y[..., size : 2 * size]
    got = op(y, size)
    assert got.shape == want.shape and torch.equal(got, want)


def test_argmax_rows_matches_torch():
    """First maximum on ties, nan as the largest, -inf rows, widths around the vector width."""
    op = kernels().argmax_rows
    torch.manual_seed(0)
    for trial in range(200):
        n, V = int(torch.randint(1, 6, ())), int(torch.randint(1, 40, ()))
        x = torch.randint(-3, 4, (n, V)).float()  # many ties
        if trial % 5 == 0:
            x.view(-1)[torch.randint(0, n * V, (2,))] = float("nan")
        if trial % 7 == 0:
            x.view(-1)[torch.randint(0, n * V, (2,))] = float("inf")
        if trial % 11 == 0:
            x.fill_(float("-inf"))
        assert torch.equal(op(x), x.argmax(-1)), (trial, x)
    x = torch.randn(4, 1000)[:, 3:900]  # rows strided
    assert torch.equal(op(x), x.argmax(-1))


def test_left_padding_is_skipped_without_changing_the_result():
    """Masked slots before a row's first real one are not read (nan there does not leak), and the output has
    the same bits as when they hold finite values."""
    op = kernels().decode_attention
    torch.manual_seed(1)
    n, Hkv, R, D, L, t = 4, 2, 3, 16, 48, 40
    k_cache, v_cache = torch.randn(n, Hkv, L, D), torch.randn(n, Hkv, L, D)
    q, k, v = torch.randn(n, Hkv, R, D), torch.randn(n, Hkv, D), torch.randn(n, Hkv, D)
    mask = torch.zeros(n, L)
    pads = [0, 5, 8, 21]
    for b, p in enumerate(pads):
        mask[b, :p] = float("-inf")
    want = op(q, k, v, k_cache.clone(), v_cache.clone(), t, mask, 0.3)
    for b, p in enumerate(pads):
        k_cache[b, :, : p - p % 8] = float("nan")  # the skipped whole vectors' worth of slots
        v_cache[b, :, : p - p % 8] = float("nan")
    assert torch.equal(op(q, k, v, k_cache, v_cache, t, mask, 0.3), want)


def test_rms_norm_has_hfs_bits():
    op = kernels().rms_norm
    for seed, C in enumerate([48, 576, 37, 64]):
        torch.manual_seed(seed)
        x = torch.randn(9, 5, C) * (10 ** torch.empty(9, 5, 1).uniform_(-3, 3))
        w = torch.randn(C)
        want = w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5))  # LlamaRMSNorm in fp32
        assert torch.equal(op(x, w, 1e-5), want)
