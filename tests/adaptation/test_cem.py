"""The cross-entropy method on synthetic fitness functions: optimum found, shapes, ties, resume, early stops."""

import json

import pytest
import torch

from transformer_squared.adaptation.cem import CEMConfig, Fitness, cem, project
from transformer_squared.errors import T2Error

TARGET = torch.tensor([0.6, 0.1, 0.3])


def distance_fitness(calls=None):
    def f(alpha):
        if calls is not None:
            calls.append(alpha.clone())
        return Fitness(-float((alpha - TARGET).abs().sum()))
    return f


def test_finds_the_optimum_on_the_simplex():
    result = cem(distance_fitness(), (3,), CEMConfig(population=32, iterations=30, seed=0))
    assert result.alpha.shape == (3,)
    assert abs(float(result.alpha.sum()) - 1) < 1e-5  # normalised by default
    assert torch.allclose(result.alpha, TARGET, atol=0.03), result.alpha
    best = [c["best"] for c in result.curve]
    assert best == sorted(best)  # the incumbent never gets worse
    assert result.curve[0]["best"] < result.curve[-1]["best"]


def test_free_alpha_reaches_an_unnormalised_optimum_and_stays_clamped():
    target = torch.tensor([0.9, 0.8, 0.05])

    def f(alpha):
        assert float(alpha.min()) >= 0 and float(alpha.max()) <= 1
        return Fitness(-float((alpha - target).abs().sum()))

    result = cem(f, (3,), CEMConfig(iterations=30, normalize=False, seed=1))
    assert torch.allclose(result.alpha, target, atol=0.05), result.alpha


def test_per_layer_alpha_has_one_weight_per_expert_per_matrix():
    K, M = 3, 5
    target = torch.softmax(torch.randn(K, M, generator=torch.Generator().manual_seed(0)), 0)  # columns sum to 1

    def f(alpha):
        assert alpha.shape == (K, M)
        assert torch.allclose(alpha.sum(0), torch.ones(M), atol=1e-5)
        return Fitness(-float((alpha - target).abs().sum()))

    result = cem(f, (K, M), CEMConfig(iterations=40, per_layer=True, seed=0))
    assert result.alpha.shape == (K, M)
    assert float((result.alpha - target).abs().max()) < 0.1


def test_ties_on_score_are_broken_by_the_tiebreak():
    # Accuracy is flat (every member ties); only the tiebreak (log-likelihood) points at expert 0.
    result = cem(lambda a: Fitness(0.5, float(a[0])), (3,), CEMConfig(iterations=15, seed=0))
    assert float(result.alpha[0]) > 0.9
    assert Fitness(1.0, -5.0) > Fitness(0.9, 0.0) > Fitness(0.9)


def test_the_incumbent_is_re_evaluated_from_the_cache():
    calls = []
    config = CEMConfig(population=8, iterations=4, seed=0)
    result = cem(distance_fitness(calls), (3,), config)
    # the best re-enters each iteration without a new call (clamping can make two samples equal: also cached)
    assert result.evaluations == len(calls) and 8 * 4 - 3 <= len(calls) <= 8 * 4
    assert len({c.numpy().tobytes() for c in calls}) == len(calls)


def test_resume_continues_exactly_where_it_stopped(tmp_path):
    config = CEMConfig(population=8, iterations=6, seed=3)
    full = cem(distance_fitness(), (3,), config)
    ck = tmp_path / "state.json"
    cem(distance_fitness(), (3,), CEMConfig(population=8, iterations=2, seed=3), checkpoint=ck)  # "interrupted"
    assert json.loads(ck.read_text())["iteration"] == 2
    calls = []
    resumed = cem(distance_fitness(calls), (3,), config, checkpoint=ck, resume=True)
    assert len(resumed.curve) == 6 and len(calls) <= 8 * 4  # only the 4 missing iterations ran
    assert torch.equal(resumed.alpha, full.alpha)
    assert [c["best"] for c in resumed.curve] == [c["best"] for c in full.curve]
    with pytest.raises(T2Error, match="another configuration"):
        cem(distance_fitness(), (3,), CEMConfig(population=9, iterations=6), checkpoint=ck, resume=True)
    fresh = cem(distance_fitness(), (3,), config, checkpoint=ck)  # without resume: starts over
    assert len(fresh.curve) == 6 and fresh.evaluations > 8 * 4


def test_early_stops():
    result = cem(lambda a: Fitness(1.0), (2,), CEMConfig(iterations=50, target=1.0))
    assert result.stopped == "target" and result.iterations == 1
    result = cem(lambda a: Fitness(0.0), (2,), CEMConfig(iterations=50, patience=3))
    assert result.stopped == "patience" and result.iterations == 4
    result = cem(distance_fitness(), (3,), CEMConfig(iterations=3))
    assert result.stopped == "iterations" and result.iterations == 3


def test_project_and_config_validation():
    raw = torch.tensor([[[0.0, 0.0, 0.0]], [[0.2, 0.2, 0.6]]]).transpose(1, 2)  # (P=2, K=3, M=1)
    out = project(raw, True)
    assert torch.allclose(out[0, :, 0], torch.full((3,), 1 / 3)) and torch.allclose(out[1, :, 0], raw[1, :, 0])
    with pytest.raises(T2Error, match="population"):
        CEMConfig(population=1)
    with pytest.raises(T2Error, match="elite fraction"):
        CEMConfig(elite_frac=0)
