"""A candidate's latency is one estimate with its interval, and a budget is met only by the interval's upper end."""

from __future__ import annotations

import math

import pytest

from autoprune.measure.latency import RatioStats
from autoprune.measure.uncertainty import MIN_RESIDUALS, LatencyEstimate, ResidualPrior, combine, pooled_interval
from autoprune.objective.budget import Budget


def stats(ratio: float, low: float, high: float, rounds: int = 15) -> RatioStats:
    return RatioStats(ratio, low, high, cv=0.0, rounds=rounds, ref_median_ms=1.0, cand_median_ms=ratio, elapsed_s=0.0)


def test_without_learned_residuals_the_measurement_alone_decides():
    found = combine(0.40, stats(0.50, 0.48, 0.52))
    assert (found.mean, found.low, found.high, found.n) == (0.50, 0.48, 0.52, 15)
    assert found.measured == 0.50 and found.predicted == 0.40


def test_an_accurate_table_narrows_the_interval_and_pulls_a_noisy_figure_towards_its_prediction():
    prior = ResidualPrior()
    for predicted, measured in [(0.5, 0.505), (0.6, 0.594), (0.7, 0.707), (0.4, 0.398), (0.3, 0.301), (0.8, 0.796)]:
        prior.add(predicted, measured)
    assert len(prior.residuals) >= MIN_RESIDUALS
    noisy = stats(0.42, 0.36, 0.49)  # a lucky, wide figure of a candidate the table puts at 0.5
    found = combine(0.50, noisy, prior)
    assert 0.42 < found.mean < 0.51
    assert found.high - found.low < noisy.ci_high - noisy.ci_low
    assert found.low <= found.mean <= found.high


def test_a_biased_table_is_corrected_by_its_mean_residual():
    prior = ResidualPrior()
    for p in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8):
        prior.add(p, p * 1.2 * (1.001 if p > 0.5 else 0.999))
    mu, sd = prior.prior(0.5)
    assert math.exp(mu) == pytest.approx(0.6, rel=0.01) and sd < 0.01


def test_latency_budget_is_met_only_when_the_whole_interval_is_within_the_target():
    budget = Budget(metric="latency", target=0.5)
    crossing = LatencyEstimate(0.48, 0.45, 0.52, 15)
    inside = LatencyEstimate(0.47, 0.46, 0.495, 15)
    assert not crossing.within(0.5) and not budget.met(crossing.mean, crossing.high, 0.5)
    assert inside.within(0.5) and budget.met(inside.mean, inside.high, 0.5)


def test_mac_budget_is_counted_so_the_point_value_decides():
    assert Budget(metric="macs", target=0.5).met(0.5, math.nan, 0.5)
    assert not Budget(metric="macs", target=0.5).met(0.51, 0.0, 0.5)


def test_the_pooled_interval_is_the_sign_test_interval_of_the_median_process() -> None:
    # five processes: [min, max] is the narrowest interval covering the median at >= 93% (1 - 2/32)
    assert pooled_interval([0.52, 0.50, 0.51, 0.49, 0.53]) == (0.51, 0.49, 0.53)
    # nine: [2nd, 8th] (96%), so one odd process at either end no longer decides it
    values = [0.40, 0.401, 0.402, 0.403, 0.404, 0.405, 0.406, 0.407, 0.63]
    median, low, high = pooled_interval(values)
    assert (median, low, high) == (0.404, 0.401, 0.407)
    # three processes cannot reach 93%: the whole range, never narrower than the data
    assert pooled_interval([0.6, 0.4, 0.5]) == (0.5, 0.4, 0.6)
    # two odd processes out of nine do move the upper end: the spread is real
    assert pooled_interval([*values[:7], 0.62, 0.63])[2] == 0.62
    with pytest.raises(ValueError, match="no values"):
        pooled_interval([])
