"""A candidate's latency ratio as an estimate with its uncertainty: the table's prediction updated by paired measurements.

The latency lookup table predicts a ratio without running the model; a paired measurement
(:meth:`autoprune.measure.latency.PairedTimer.ratio`) gives a median ratio with a
distribution-free 95% interval. Neither alone is trustworthy: the table is off by a few percent
for some shapes, and a short measurement on a busy machine is noisy, so the lowest of hundreds
of noisy figures is lucky (the winner's curse). :func:`combine` treats both as normal on the
log ratio (a latency ratio is a product of factors, so its errors are closer to normal in log
space) and applies the conjugate normal-normal update (Gelman et al., *Bayesian Data Analysis*,
section 2.5): the posterior mean is the precision-weighted mean of the prior and the measurement,
its precision their sum. The prior's spread is learned from the table's residuals against the
measurements made so far (:class:`ResidualPrior`); until there are enough of them the prior is
so wide that the measurement alone decides.

Every figure of a candidate's latency the product shows (the evaluator's :class:`Metrics`, the
search summary, the final table) is one :class:`LatencyEstimate`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from autoprune.measure.latency import RatioStats

#: The two-sided 95% normal quantile: an interval ``mean * exp(+-Z95 * sd)`` on the log ratio.
Z95 = 1.959963984540054
#: Residuals needed before the table's prediction counts as a prior (fewer: the measurement decides).
MIN_RESIDUALS = 5
#: The log-sd of the prior before :data:`MIN_RESIDUALS` residuals (a factor of e either way: no information).
WIDE_PRIOR_SD = 1.0
#: The smallest log-sd a prior or a measurement is given (0.5%): a perfect-looking figure is never taken as exact.
MIN_SD = 0.005
#: Coverage of the interval of the median process (:func:`pooled_interval`).
POOLED_COVERAGE = 0.93


@dataclass(frozen=True)
class LatencyEstimate:
    """A latency ratio to dense with its ~95% interval, and how it was reached.

    Attributes:
        mean: The estimate of the ratio (candidate latency / dense latency).
        low, high: Its ~95% interval (``low <= mean <= high``); ``high`` is what a budget is checked against.
        n: Paired rounds measured behind it (0: a prediction only).
        measured: The paired measurement's own median ratio (NaN without one).
        predicted: The lookup table's prediction (NaN without one).
        source: Where the figure comes from: ``search`` (the search's process) or ``fresh`` (a new process).
    """

    mean: float
    low: float
    high: float
    n: int
    measured: float = math.nan
    predicted: float = math.nan
    source: str = "search"

    @property
    def rel_halfwidth(self) -> float:
        """Half of the interval's width relative to the mean (0.03: +-3%)."""
        return (self.high - self.low) / 2 / self.mean if self.mean > 0 else math.inf

    def within(self, target: float) -> bool:
        """Whether the whole interval is at most ``target``: the budget is met only when even ``high`` is."""
        return self.high <= target

    def show(self) -> str:
        """E.g. ``0.481 [0.470, 0.492], 30 rounds``."""
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}], {self.n} rounds"

    def as_dict(self) -> dict[str, float | int | str]:
        """Plain data (JSON-ready)."""
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n, "measured": self.measured,
                "predicted": self.predicted, "source": self.source}

    @classmethod
    def of_measurement(cls, stats: RatioStats, *, source: str = "search") -> LatencyEstimate:
        """A paired measurement alone (no prior): its median and interval."""
        return cls(stats.ratio, stats.ci_low, stats.ci_high, stats.rounds, stats.ratio, math.nan, source)


def measurement_log_sd(ratio: float, low: float, high: float) -> float:
    """The log-sd a paired measurement's ~95% interval implies (at least :data:`MIN_SD`)."""
    if not (ratio > 0 and low > 0 and high > 0):
        return WIDE_PRIOR_SD
    return max(MIN_SD, (math.log(high) - math.log(low)) / (2 * Z95))


@dataclass
class ResidualPrior:
    """The table's error, learned from ``log(measured / predicted)`` of every candidate measured so far.

    The prior of a new candidate is its prediction times ``exp(mean residual)`` (the table's bias
    removed), with the residuals' sd as its log-sd. The residuals include measurement noise, so
    this spread is an upper bound of the table's own error: the prior errs on the wide side.

    Attributes:
        residuals: ``log(measured / predicted)`` per measured candidate.
    """

    residuals: list[float] = field(default_factory=list)

    def add(self, predicted: float, measured: float) -> None:
        """Record one candidate's residual (ignored unless both are positive and finite)."""
        if predicted > 0 and measured > 0 and math.isfinite(predicted) and math.isfinite(measured):
            self.residuals.append(math.log(measured / predicted))

    def corrected(self, predicted: float) -> float:
        """``predicted`` with the table's learned bias removed (``predicted * exp(mean residual)``); unchanged before
        :data:`MIN_RESIDUALS` residuals."""
        if len(self.residuals) < MIN_RESIDUALS or not predicted > 0:
            return predicted
        return predicted * math.exp(sum(self.residuals) / len(self.residuals))

    def prior(self, predicted: float) -> tuple[float, float]:
        """``(log mean, log sd)`` of the prior for a candidate the table predicts at ``predicted``."""
        r = self.residuals
        if len(r) < MIN_RESIDUALS or not predicted > 0:
            return math.log(predicted) if predicted > 0 else 0.0, WIDE_PRIOR_SD
        mean = sum(r) / len(r)
        sd = math.sqrt(sum((x - mean) ** 2 for x in r) / (len(r) - 1))
        return math.log(predicted) + mean, max(MIN_SD, sd)


def combine(predicted: float, stats: RatioStats, prior: ResidualPrior | None = None, *, source: str = "search") -> LatencyEstimate:
    """The normal-normal update on the log ratio of the table's prediction by a paired measurement.

    Args:
        predicted: The lookup table's ratio (NaN or <= 0: no prior, the measurement alone).
        stats: The paired measurement (median ratio, ~95% interval, rounds).
        prior: The table's learned error (None: a wide prior, the measurement alone).
        source: ``search`` or ``fresh``.

    Returns:
        The posterior: mean ``exp(mu)``, interval ``exp(mu +- Z95 * sd)``, ``n`` = the rounds measured.
    """
    m_mu, m_sd = math.log(stats.ratio) if stats.ratio > 0 else 0.0, measurement_log_sd(stats.ratio, stats.ci_low, stats.ci_high)
    p_mu, p_sd = (prior or ResidualPrior()).prior(predicted) if predicted > 0 else (0.0, math.inf)
    if not math.isfinite(p_sd) or p_sd >= WIDE_PRIOR_SD:
        mu, sd = m_mu, m_sd
    else:
        w_p, w_m = 1 / p_sd**2, 1 / m_sd**2
        mu, sd = (w_p * p_mu + w_m * m_mu) / (w_p + w_m), math.sqrt(1 / (w_p + w_m))
    if sd == m_sd and mu == m_mu:  # the measurement alone: keep its own distribution-free interval
        return LatencyEstimate(stats.ratio, stats.ci_low, stats.ci_high, stats.rounds, stats.ratio, predicted, source)
    return LatencyEstimate(math.exp(mu), math.exp(mu - Z95 * sd), math.exp(mu + Z95 * sd), stats.rounds, stats.ratio, predicted, source)


def pooled_interval(values: Sequence[float], coverage: float = POOLED_COVERAGE) -> tuple[float, float, float]:
    """``(median, low, high)`` of per-process figures: the median and its distribution-free interval.

    The interval is ``[x(k), x(n+1-k)]`` of the sorted values with the largest ``k`` whose
    coverage of the population median, ``1 - 2 * P(Binomial(n, 1/2) < k)``, is at least
    ``coverage`` (the sign-test interval; Conover, *Practical Nonparametric Statistics*, 3.2);
    below the ``n`` that reaches it (5 for 0.93), the whole range. Unlike the span of the
    processes' own intervals, one odd process among nine does not decide it.

    Raises:
        ValueError: no values.
    """
    xs = sorted(values)
    n = len(xs)
    if not n:
        raise ValueError("pooled_interval: no values")
    k = 1
    while k < (n + 1) // 2 and 1 - 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n >= coverage:
        k += 1
    return statistics.median(xs), xs[k - 1], xs[n - k]


__all__ = ["LatencyEstimate", "MIN_RESIDUALS", "POOLED_COVERAGE", "ResidualPrior", "Z95", "combine", "measurement_log_sd", "pooled_interval"]
