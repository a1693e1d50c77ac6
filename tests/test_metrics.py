"""metrics: accuracy summaries, the Wilson interval, and the paired statistics of `t2 compare`, against published
reference values."""

import math

import pytest

from transformer_squared.metrics import (accuracy_summary, format_accuracy, mcnemar_exact_p, paired_comparison,
                                         paired_difference_interval, wilson_interval)


def test_wilson_interval_reference_values():
    # Newcombe (1998, Stat. Med. 17:857) Table I: 81/263 -> 0.2553 to 0.3662
    lo, hi = wilson_interval(81, 263)
    assert (round(lo, 4), round(hi, 4)) == (0.2553, 0.3662)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0


def test_summary_fields():
    s = accuracy_summary([True, False, True, True])
    assert (s["n"], s["correct"], s["accuracy"]) == (4, 3, 0.75)
    lo, hi = s["ci95"]
    assert lo == pytest.approx(0.30064, abs=1e-4) and hi == pytest.approx(0.95441, abs=1e-4)


def test_wilson_edges():
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and 0.25 < hi < 0.32             # never a zero-width interval at 0%
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and 0.68 < lo < 0.75
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


def test_empty_and_format():
    assert accuracy_summary([]) == {"n": 0, "correct": 0, "accuracy": 0.0, "ci95": [0.0, 1.0]}
    assert format_accuracy(accuracy_summary([True] * 3 + [False])) == "75.00% (3/4, 95% CI 30.1-95.4)"


def test_mcnemar_exact_p_is_the_two_sided_binomial_tail_on_the_discordant_pairs():
    # binom.test(6, 22, 0.5) in R: p = 0.05248
    assert mcnemar_exact_p(6, 16) == pytest.approx(0.052478790283203125, rel=1e-12)
    assert mcnemar_exact_p(16, 6) == mcnemar_exact_p(6, 16)  # symmetric
    assert mcnemar_exact_p(0, 10) == pytest.approx(2 / 2 ** 10)
    assert mcnemar_exact_p(3, 3) == 1.0 and mcnemar_exact_p(0, 0) == 1.0  # capped; no discordance, no evidence
    # large counts stay exact (integers until one division; a float tail of 0.5 ** n terms would lose them)
    assert mcnemar_exact_p(0, 1000) == pytest.approx(2.0 ** -999, rel=1e-12)
    assert mcnemar_exact_p(500, 500) == 1.0
    with pytest.raises(ValueError):
        mcnemar_exact_p(-1, 3)


def test_paired_interval_matches_newcombes_method_10_reference():
    # The contingencytables R package (Fagerland, Lydersen & Laake), Newcombe square-and-add paired 2x2, table
    # [[59, 6], [16, 80]]: p1 - p2 = -0.0621, 95% CI -0.1186 to -0.0046. Ours is B - A with A the rows.
    lo, hi = paired_difference_interval(both=59, only_a=6, only_b=16, neither=80)
    assert (round(-hi, 4), round(-lo, 4)) == (-0.1186, -0.0046)


def test_paired_interval_is_sane_at_the_edges():
    assert paired_difference_interval(0, 0, 0, 0) == (-1.0, 1.0)
    # identical outcomes, all right or all wrong: phi = 0 and both Wilson intervals are [1 - w, 1] (or [0, w]) with
    # w = z²/(n + z²), so the interval is ±w: not zero-width at a difference of 0
    z2 = 1.959964 ** 2
    for cells in ({"both": 50, "neither": 0}, {"both": 0, "neither": 50}):
        lo, hi = paired_difference_interval(only_a=0, only_b=0, **cells)
        assert (lo, hi) == pytest.approx((-z2 / (50 + z2), z2 / (50 + z2)), abs=1e-6)
    lo, hi = paired_difference_interval(both=0, only_a=0, only_b=30, neither=0)  # B right everywhere A is wrong
    assert 0 < lo < hi == 1.0


def test_paired_comparison_counts_the_table():
    a = [True, True, False, False, True, False]
    b = [True, False, True, True, True, False]
    r = paired_comparison(a, b)
    assert r["table"] == {"both": 2, "only_a": 1, "only_b": 2, "neither": 1}
    assert r["a"]["correct"] == 3 and r["b"]["correct"] == 4 and r["n"] == 6
    assert r["difference"] == pytest.approx(1 / 6)
    assert r["mcnemar_p"] == pytest.approx(1.0)  # 1 vs 2 discordant: 2 * P(X <= 1 | 3) = 1
    lo, hi = r["difference_ci95"]
    assert lo < r["difference"] < hi and not math.isnan(lo)
    with pytest.raises(ValueError, match="same items"):
        paired_comparison([True], [True, False])
