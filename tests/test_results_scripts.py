"""results/grad_snr.py's statistics on synthetic per-prompt gradients whose parts are known: the noise split of two
independent rollouts of the same prompts recovers the common direction, the prompts' spread and the sampling noise."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def grad_snr():
    spec = importlib.util.spec_from_file_location("grad_snr", REPO / "results" / "grad_snr.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def synthetic(P: int, D: int, common: float, spread: float, noise: float, seed: int):
    """Two rollouts' gradients (P, D) of P prompts: m_k = mu + prompt spread, each draw m_k + sampling noise."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(D, generator=g, dtype=torch.double) * (common / D) ** 0.5
    m = mu + torch.randn(P, D, generator=g, dtype=torch.double) * (spread / D) ** 0.5
    draw = lambda: m + torch.randn(P, D, generator=g, dtype=torch.double) * (noise / D) ** 0.5  # noqa: E731
    return draw(), draw()


@pytest.mark.parametrize("common, spread, noise", [(20.0, 180.0, 2000.0), (5.0, 0.0, 50.0)])
def test_split_noise_recovers_the_parts(grad_snr, common, spread, noise):
    a, b = synthetic(64, 1000, common, spread, noise, seed=1)
    r = grad_snr.split_noise(a, b)
    assert r["common_signal"] == pytest.approx(common, rel=0.3)
    assert r["between_prompts"] == pytest.approx(spread, abs=0.15 * (spread + noise) ** 0.5 * 8)
    assert r["sampling_noise"] == pytest.approx(noise, rel=0.05)
    lo, hi = r["common_signal_ci95"]
    assert lo < r["common_signal"] < hi
    assert r["batch_for_snr_1_infinite_samples"] == pytest.approx(r["between_prompts"] / r["common_signal"])


def test_no_common_direction_gives_no_batch(grad_snr):
    a, b = synthetic(32, 1000, 0.0, 100.0, 500.0, seed=2)
    r = grad_snr.split_noise(a, b)
    assert r["per_prompt_signal"] == pytest.approx(100.0, rel=0.3)
    lo, hi = r["common_signal_ci95"]
    assert lo < 0 < hi  # nothing shared: the interval covers 0


def test_snr_of_one_shared_direction(grad_snr):
    a, _ = synthetic(64, 1000, 50.0, 0.0, 200.0, seed=3)
    r = grad_snr.snr(a)
    assert r["mu2"] == pytest.approx(50.0, rel=0.3)
    assert r["tr_sigma"] == pytest.approx(200.0, rel=0.1)
    assert r["batch_for_snr_1"] == pytest.approx(4.0, rel=0.4)
