"""metrics.py: accuracy summaries with Wilson 95% intervals (values checked against a textbook computation)."""

import pytest

from transformer_squared.metrics import accuracy_summary, format_accuracy, wilson_interval


def test_summary_fields():
    s = accuracy_summary([True, False, True, True])
    assert (s["n"], s["correct"], s["accuracy"]) == (4, 3, 0.75)
    lo, hi = s["ci95"]
    assert lo == pytest.approx(0.30064, abs=1e-4) and hi == pytest.approx(0.95441, abs=1e-4)


def test_wilson_known_values_and_edges():
    # 81/263: a worked example of the Wilson interval (0.2553, 0.3662)
    lo, hi = wilson_interval(81, 263)
    assert lo == pytest.approx(0.2553, abs=1e-4) and hi == pytest.approx(0.3662, abs=1e-4)
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
