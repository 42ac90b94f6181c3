"""How a paired latency measurement is scheduled: one frozen :class:`PairedSchedule`.

A paired measurement (:meth:`autoprune.measure.latency.PairedTimer.ratio`) times a candidate
and a reference in rounds of interleaved calls. The schedule says how many rounds, how the
calls of a round are ordered, when to stop early, how each round is summarised and which
clock is read. Two fields are left to the backend when None (``interleave`` and
``calls_per_round``): each backend states how it is timed best in its ``paired_schedule``
(:class:`autoprune.measure.backends.LatencyBackend`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from autoprune.errors import ConfigError

#: Clocks a schedule may read: wall time, or CPU time of the calling thread / whole process.
CLOCKS: dict[str, Callable[[], int]] = {"wall": time.perf_counter_ns, "thread": time.thread_time_ns, "process": time.process_time_ns}

#: Per-round summaries of one model's calls.
STATISTICS: dict[str, Callable[[Sequence[float]], float]] = {"min": min, "median": lambda v: float(np.median(v))}

INTERLEAVES = ("calls", "blocks")


def check_count(field: str, value: object, minimum: int) -> None:
    """Refuse a count that is not an integer of at least ``minimum``.

    Raises:
        ConfigError: ``"{field}: expected an integer >= {minimum}, got {value!r}"``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{field}: expected an integer >= {minimum}, got {value!r}")


def _check_positive(field: str, value: object, what: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
        raise ConfigError(f"{field}: expected {what} or None, got {value!r}")


@dataclass(frozen=True)
class PairedSchedule:
    """The schedule of one paired measurement of a candidate against a reference.

    At the defaults a measurement costs about 100 calls (0.3-0.5 s for a ResNet-20 at batch 1 and
    one thread on a quiet core).

    Attributes:
        warmup: Untimed (reference, candidate) pairs first.
        rounds: Rounds to measure when ``rel_ci`` is None.
        calls_per_round: Calls of each model per round (None: the backend's ``paired_schedule``).
        min_rounds: With ``rel_ci`` or ``time_budget_s``, never stop before this many rounds.
        max_rounds: With ``rel_ci``, stop after this many rounds anyway (None: ``max(rounds, min_rounds)``).
        rel_ci: Stop as soon as the 95% CI half-width relative to the ratio is at most this
            (a fraction such as 0.03; None: always ``rounds`` rounds).
        time_budget_s: Stop after ``min_rounds`` once this many seconds of wall time have passed
            (bounds the cost when the machine is overloaded; None: no bound).
        interleave: None: the backend's ``paired_schedule``. ``calls``: each round alternates
            single reference and candidate calls; ``blocks``: each round runs one untimed call
            and then ``calls_per_round`` timed calls of one model, then the same for the other (a
            runtime's caches and idle threads settle on one model before it is timed).
        statistic: Per-round summary of each model's calls: ``min`` (the least disturbed call)
            or ``median``.
        clock: ``wall`` (latency as served); ``thread``: CPU time of the calling thread, which
            excludes the time other processes hold the core (on an overloaded machine it cut the
            ratio's CV from 5.4% to 2.4% on ONNX Runtime), valid only when the whole inference
            runs on the calling thread (the backend's ``runs_on_calling_thread``); ``process``:
            CPU time of all the process's threads (counts idle spinning, so only for
            non-spinning runtimes).

    Raises:
        ConfigError: a field out of range, naming it (counts below their minimum, ``max_rounds``
            below ``min_rounds``, a non-positive ``rel_ci`` or ``time_budget_s``, an unknown
            ``interleave``, ``statistic`` or ``clock``).
    """

    warmup: int = 3
    rounds: int = 15
    calls_per_round: int | None = None
    min_rounds: int = 5
    max_rounds: int | None = None
    rel_ci: float | None = None
    time_budget_s: float | None = None
    interleave: Literal["calls", "blocks"] | None = None
    statistic: Literal["min", "median"] = "min"
    clock: Literal["wall", "thread", "process"] = "wall"

    def __post_init__(self) -> None:
        check_count("warmup", self.warmup, 0)
        check_count("rounds", self.rounds, 1)
        if self.calls_per_round is not None:
            check_count("calls_per_round", self.calls_per_round, 1)
        check_count("min_rounds", self.min_rounds, 1)
        if self.max_rounds is not None:
            check_count("max_rounds", self.max_rounds, self.min_rounds)
        _check_positive("rel_ci", self.rel_ci, "a positive fraction such as 0.03")
        _check_positive("time_budget_s", self.time_budget_s, "a positive number of seconds")
        if self.interleave is not None and self.interleave not in INTERLEAVES:
            raise ConfigError(f"interleave: expected 'calls' or 'blocks', got {self.interleave!r}")
        if self.statistic not in STATISTICS:
            raise ConfigError(f"statistic: expected one of {', '.join(STATISTICS)}, got {self.statistic!r}")
        if self.clock not in CLOCKS:
            raise ConfigError(f"clock: expected one of {', '.join(CLOCKS)}, got {self.clock!r}")

    def on(self, backend_schedule: PairedSchedule) -> PairedSchedule:
        """This schedule with the fields it leaves to the backend (``interleave``, ``calls_per_round``) taken from ``backend_schedule``."""
        return dataclasses.replace(
            self,
            interleave=self.interleave or backend_schedule.interleave or "calls",
            calls_per_round=self.calls_per_round or backend_schedule.calls_per_round or 3,
        )

    @property
    def limit(self) -> int:
        """The most rounds measured: ``rounds``, or with ``rel_ci`` the ``max_rounds``."""
        if self.rel_ci is None:
            return self.rounds
        return self.max_rounds if self.max_rounds is not None else max(self.rounds, self.min_rounds)


def median_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Order-statistic confidence interval for the median (binomial, no distribution assumed).

    Args:
        values: At least one sample.
        confidence: Coverage of the interval (with few samples the min-max range, which covers less).

    Returns:
        ``(low, high)``, two of the sorted samples.
    """
    x = sorted(values)
    n = len(x)
    tail = (1 - confidence) / 2
    k, cdf = 1, 0.5**n  # cdf = P(Binomial(n, 1/2) <= k - 1)
    while k < (n + 1) // 2:
        next_cdf = cdf + math.comb(n, k) * 0.5**n
        if next_cdf > tail:
            break
        k, cdf = k + 1, next_cdf
    return x[k - 1], x[n - k]


__all__ = ["CLOCKS", "INTERLEAVES", "PairedSchedule", "STATISTICS", "check_count", "median_ci"]
