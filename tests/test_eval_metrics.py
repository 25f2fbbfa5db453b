"""ALOE metrics against values computed by hand."""

from __future__ import annotations

import math

import pytest

from aloe_ray.eval.metrics import (
    METRICS,
    alignment_levels,
    bootstrap_intervals,
    expected_score,
    fit_line,
    normalised,
    percentile_interval,
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


def test_percentile_interval_by_hand():
    values = [float(v) for v in range(11)] + [None]  # 0..10, None skipped; n - 1 = 10
    assert percentile_interval(values, 0.8) == [1.0, 9.0]  # floor(0.1 * 10), ceil(0.9 * 10)
    assert percentile_interval(values, 0.95) == [0.0, 10.0]  # floor(0.25), ceil(9.75)
    assert percentile_interval([3.0, 1.0, 2.0], 0.5) == [1.0, 3.0]  # sorted first: floor(0.5), ceil(1.5)
    assert percentile_interval([None, None]) is None


def test_bootstrap_intervals_bracket_the_estimates():
    scores = {f"p{i}": [1 + i % 3, 2 + i % 3, 3 + i % 2] for i in range(20)}
    summary = summarize(scores)
    cis = bootstrap_intervals(scores, samples=300, seed=1)
    assert set(cis) == {f"{m}_CI" for m in METRICS}
    lo, hi = cis["IR_CI"]
    assert lo <= summary["IR"] <= hi and hi - lo < 2
    assert len(cis["AL_CI"]) == len(cis["N_AL_CI"]) == 3
    for (lo, hi), al in zip(cis["AL_CI"], summary["AL"]):
        assert lo <= al <= hi
    assert cis == bootstrap_intervals(scores, samples=300, seed=1)  # seeded
    assert cis != bootstrap_intervals(scores, samples=300, seed=2)


def test_bootstrap_intervals_degenerate_cases():
    assert bootstrap_intervals({"only": [1, 2]}) == {f"{m}_CI": None for m in METRICS}
    same = bootstrap_intervals({"a": [1, 2], "b": [1, 2]}, samples=50)
    assert same["IR_CI"] == pytest.approx([1.0, 1.0]) and not math.isnan(same["IR_CI"][0])
    assert same["AL_CI"] == [[1.0, 1.0], [2.0, 2.0]]
    # a turn nobody scored has no interval; R2 of a flat AL curve is undefined in every resample
    flat = bootstrap_intervals({"a": [3, 3, None], "b": [3, 3, None]}, samples=20)
    assert flat["AL_CI"][2] is None and flat["R2_CI"] is None
