"""∂L/∂z pinned: the values SVF training produced before issue #15 made svf.py the one place z is applied.

`data/svf_gradients.safetensors` was written by `write()` at commit be9485e (the merged-weight SVFPolicy with its
own chain rule, and the SVF layers' `train` mode with W' recomposed inside autograd), one thread. Every later
implementation of the gradient (factored, cached, a custom autograd.Function) must reproduce those values within
float tolerance, for both parametrizations, for Linear and GPT-2 Conv1D layers, with gradients accumulated over
micro-batches. Regenerate only on purpose (a changed tiny model or loss), never to make a failing test pass:

    OMP_NUM_THREADS=1 .venv/bin/python -m tests.training.test_policy_gradients --write
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from transformer_squared.adapted import AdaptedModel
from transformer_squared.models import LoadedModel
from transformer_squared.svd import decompose
from transformer_squared.svf import SVF, ZInit
from transformer_squared.targets import resolve_targets
from transformer_squared.testing import tiny_model
from transformer_squared.training.policy import SVFPolicy

from .tinylm import tiny_tokenizer

DATA = Path(__file__).resolve().parent / "data" / "svf_gradients.safetensors"
IDS = torch.tensor([[5, 17, 3, 99, 42, 8, 1], [7, 7, 60, 2, 11, 120, 33]])
# (how the gradient is taken, architecture, parametrization, targets)
CASES = [("policy", "llama", "direct", "mlp"), ("policy", "llama", "reference", "mlp"),
         ("policy", "llama", "direct", "all"), ("policy", "gpt2", "direct", "all"),
         ("policy", "gpt2", "reference", "mlp"), ("policy-micro", "qwen2", "direct", "mlp"),
         ("train", "llama", "direct", "all"), ("train", "gpt2", "reference", "all")]


def _loss(model, ids):
    out = model(input_ids=ids).logits  # (B, T, V)
    return torch.log_softmax(out, -1)[..., :-1, :].gather(-1, ids[:, 1:, None]).sum() * 0.37


def _away_from_one(params) -> None:
    """Move z (or p) off its start so that every term of the chain rule matters."""
    with torch.no_grad():
        for i, p in enumerate(params):
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(100 + i)))


def case_gradients(how: str, arch: str, parametrization: str, targets: str) -> dict[str, torch.Tensor]:
    """name → ∂L/∂(z or p) for one case, through the public API only (so the same code checks any implementation)."""
    torch.manual_seed(0)
    model = tiny_model(arch, seed=1)
    init = ZInit(parametrization=parametrization)
    if how == "train":
        svf = SVF.attach(model, decompose(model, resolve_targets(model, targets), cache=False, progress=False))
        params = svf.train_mode(init, seed=3)
        _away_from_one(params)
        _loss(model, IDS).backward()
        return {n: p.grad.clone() for n, p in zip(svf.layers, params)}
    lm = LoadedModel(model=model, tokenizer=tiny_tokenizer(), name=f"tiny-{arch}", source="local", path="")
    pol = SVFPolicy(AdaptedModel.prepare(lm, targets, progress=False, cache=False), init, seed=3)
    _away_from_one(pol.parameters())
    pol.after_update()
    with pol.grad_pass():
        if how == "policy-micro":  # one sequence per micro-batch, then a second pass into the same .grad
            for row in range(2):
                _loss(model, IDS[row : row + 1]).backward()
        else:
            _loss(model, IDS).backward()
    with pol.grad_pass():  # a second gradient pass before the optimizer step accumulates into .grad
        _loss(model, IDS[:, :5]).backward()
    out = {n: p.grad.clone() for n, p in zip(pol.am.svf.names, pol.parameters())}
    pol.close()
    return out


def _key(case, name: str) -> str:
    return "|".join(case) + "|" + name


@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_gradients_equal_the_pinned_ones(case):
    from safetensors.torch import load_file

    pinned = load_file(str(DATA))
    got = case_gradients(*case)
    assert len(got) > 1
    for name, g in got.items():
        want = pinned[_key(case, name)]
        scale = float(want.abs().max())
        assert scale > 0, "a pinned gradient of zero would check nothing"
        # Float tolerance: the factored backward leaves out the SVD's reconstruction error (~1e-6 relative, seen
        # up to 2.5e-6); a wrong term (σ, U/V swapped, the parametrization's chain rule, a lost micro-batch) is
        # off by far more than 1e-3.
        torch.testing.assert_close(g, want, atol=2e-5 * scale, rtol=1e-4, msg=lambda m: f"{case} {name}: {m}")
        assert float((g - want).norm() / want.norm()) < 1e-5, (case, name)


def write() -> None:
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    out = {_key(c, n): g.contiguous() for c in CASES for n, g in case_gradients(*c).items()}
    DATA.parent.mkdir(exist_ok=True)
    save_file(out, str(DATA))
    print(f"wrote {len(out)} gradients to {DATA}")


if __name__ == "__main__":
    import sys

    if "--write" in sys.argv:
        write()
