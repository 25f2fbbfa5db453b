"""ALOE metrics against values computed by hand."""

from __future__ import annotations

import math

import pytest

from aloe_ray.eval.metrics import (
    alignment_levels,
    bootstrap_ci,
    expected_score,
    fit_line,
    normalised,
    summarize,
)


def test_alignment_levels_skip_missing_scores():
    scores = {"p1": [1, 4, 3], "p2": [3, None, 3], "p3": [2, 4]}
    assert alignment_levels(scores) == [2.0, 4.0, 3.0]


def test_fit_by_hand():
    # AL = 2, 4, 3 at k = 1, 2, 3: mean k 2, mean AL 3; Sxy = 1, Sxx = 2 -> b = 0.5, a = 2;
    # predictions 2.5, 3, 3.5 -> SS_res = 1.5, SS_tot = 2 -> R^2 = 0.25
    slope, intercept, r2 = fit_line([2, 4, 3])
    assert (slope, intercept, r2) == pytest.approx((0.5, 2.0, 0.25))
    assert fit_line([1, 2, 3]) == pytest.approx((1.0, 0.0, 1.0))
    assert fit_line([3, 3, 3])[2] is None  # nothing to explain
    assert fit_line([5]) == (None, None, None)


def test_normalised_metrics_by_hand():
    summary = summarize({"p1": [1, 5, 3], "p2": [3, 3, 3]})  # AL = 2, 4, 3
    assert summary["AL"] == [2.0, 4.0, 3.0]
    assert summary["N_AL"] == [0.0, 1.0, 0.5]
    assert summary["IR"] == pytest.approx(0.5) and summary["R2"] == pytest.approx(0.25)
    assert summary["N_IR"] == pytest.approx(0.25)  # slope scales by 1 / (max - min) = 1/2
    assert summary["N_R2"] == pytest.approx(0.25)  # R^2 is invariant to the rescaling
    assert normalised([2, 2, None]) == [0.0, 0.0, None]


def test_expected_score():
    assert expected_score([0, 0, 0, 0, 1]) == 5
    assert expected_score([0.5, 0, 0, 0, 0.5]) == pytest.approx(3)
    with pytest.raises(ValueError, match="five probabilities"):
        expected_score([0.5, 0.5])


def test_bootstrap_ci_brackets_the_estimate():
    scores = {f"p{i}": [1 + i % 3, 2 + i % 3, 3 + i % 2] for i in range(20)}
    ir = summarize(scores)["IR"]
    lo, hi = bootstrap_ci(scores, lambda s: summarize(s)["IR"], samples=300, seed=1)
    assert lo <= ir <= hi and hi - lo < 2
    assert bootstrap_ci({"only": [1, 2]}, lambda s: 0.0) is None
    same = bootstrap_ci({"a": [1, 2], "b": [1, 2]}, lambda s: summarize(s)["IR"], samples=50)
    assert same == pytest.approx((1.0, 1.0)) and not math.isnan(same[0])
