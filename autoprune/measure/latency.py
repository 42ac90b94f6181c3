"""Latency, MACs, parameters and size of a model, measured the way a benchmark would.

Absolute latencies on a shared machine drift by 10-20% between back-to-back runs, so
the search compares a candidate with the dense reference by *paired* measurement:
calls of the two models are interleaved and only their ratio is reported
(:class:`PairedTimer`, :func:`measure_latency_ratio`), on a schedule given by one
:class:`~autoprune.measure.schedule.PairedSchedule`. Everything runs with a fixed thread
count (:func:`fixed_threads`) on a backend (:func:`~autoprune.measure.backends.get_backend`,
defined with the backend base class and registry in :mod:`autoprune.measure.backends`).
The latency lookup table that predicts latency without running a model lives in
:mod:`autoprune.measure.table`.
"""

from __future__ import annotations

import gc
import io
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from autoprune.errors import ConfigError
from autoprune.graph.layers import ExampleInput, count_macs, record_layer_specs
from autoprune.measure.backends import DEFAULT_THREADS, LatencyBackend, Runner, get_backend
from autoprune.measure.schedule import CLOCKS, STATISTICS, PairedSchedule, check_count, median_ci

logger = logging.getLogger(__name__)


@contextmanager
def fixed_threads(n: int) -> Iterator[None]:
    """Run the body with ``torch.set_num_threads(n)``, then restore the previous count.

    Raises:
        ConfigError: ``n`` is not a positive integer.
    """
    check_count("threads", n, 1)
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def _timing(threads: int) -> Iterator[None]:
    """Fixed threads and no garbage-collector pauses while timing."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        with fixed_threads(threads):
            yield
    finally:
        if gc_was_enabled:
            gc.enable()


def _time_ms(run: Runner, clock: Callable[[], int] = time.perf_counter_ns) -> float:
    start = clock()
    run()
    return (clock() - start) / 1e6


def _as_runner(model: nn.Module | Runner, example_input: ExampleInput, backend: LatencyBackend) -> Runner:
    if isinstance(model, nn.Module):
        return backend.prepare(model, example_input)
    if callable(model):
        return model
    raise ConfigError(f"model: expected a torch.nn.Module or a prepared zero-argument callable, got {type(model).__name__}")


@dataclass(frozen=True)
class LatencyStats:
    """Summary of per-call latencies in milliseconds."""

    median_ms: float
    mean_ms: float
    std_ms: float
    p10_ms: float
    p90_ms: float
    cv: float
    n: int

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> LatencyStats:
        """Summarise raw per-call times (milliseconds)."""
        a = np.asarray(samples_ms, dtype=float)
        mean = float(a.mean())
        std = float(a.std(ddof=1)) if a.size > 1 else 0.0
        p10, median, p90 = (float(v) for v in np.percentile(a, [10, 50, 90]))
        return cls(median, mean, std, p10, p90, std / mean if mean > 0 else 0.0, int(a.size))


def measure_latency(
    model: nn.Module | Runner,
    example_input: ExampleInput,
    *,
    backend: str | LatencyBackend = "torch",
    warmup: int = 10,
    repeats: int = 30,
    threads: int = DEFAULT_THREADS,
) -> LatencyStats:
    """Time ``repeats`` single inferences after ``warmup`` untimed ones.

    Args:
        model: A module (prepared with ``backend``) or an already prepared runner.
        example_input: Input batch; its batch size is the one measured.
        backend: Backend name or instance.
        warmup: Untimed calls first.
        repeats: Timed calls.
        threads: Intra-op threads during the measurement.

    Raises:
        ConfigError: bad backend name or counts.
    """
    check_count("warmup", warmup, 0)
    check_count("repeats", repeats, 1)
    run = _as_runner(model, example_input, get_backend(backend))
    with _timing(threads):
        for _ in range(warmup):
            run()
        samples = [_time_ms(run) for _ in range(repeats)]
    return LatencyStats.from_samples(samples)


@dataclass(frozen=True)
class RatioStats:
    """Latency of a candidate relative to a reference, from interleaved calls.

    Attributes:
        ratio: Median over rounds of the per-round ratio (fastest candidate call / fastest reference call).
        ci_low, ci_high: Distribution-free ~95% confidence interval of that median
            (order statistics; with fewer than 6 rounds it is the min-max range).
        cv: Coefficient of variation of the per-round ratios.
        rounds: Rounds measured.
        ref_median_ms, cand_median_ms: Median single-call times during the measurement.
        elapsed_s: Wall time spent, warm-up included.
    """

    ratio: float
    ci_low: float
    ci_high: float
    cv: float
    rounds: int
    ref_median_ms: float
    cand_median_ms: float
    elapsed_s: float

    @property
    def rel_halfwidth(self) -> float:
        """Half-width of the confidence interval relative to the ratio."""
        return (self.ci_high - self.ci_low) / 2 / self.ratio


@dataclass
class _Rounds:
    """What the rounds of one paired measurement collected."""

    ratios: list[float]
    ref_ms: list[float]
    cand_ms: list[float]


class PairedTimer:
    """Measures latency ratios to one reference model, prepared once.

    Each round times the two models back to back (:class:`~autoprune.measure.schedule.PairedSchedule`
    says how); the first model alternates between rounds to cancel order effects. The
    round's ratio is min(candidate times) / min(reference times): noise only ever
    adds time, so the fastest call of each model is its least disturbed one, and
    calls close in time see the same machine state. The result is the median over
    rounds, so a few spoilt rounds do not move it.

    Args:
        reference: Reference module or prepared runner.
        example_input: Input batch (the measured batch size).
        backend: Backend name or instance.
        threads: Intra-op threads during measurements (also the backend's threads).
        history: Reference call times kept for :meth:`reference_ms`.
        backend_options: Backend settings by keyword (see :func:`~autoprune.measure.backends.get_backend`).

    Raises:
        ConfigError: bad backend name, option or thread count, or the backend's extra is missing.
        ModelError: the backend cannot run the reference.
    """

    def __init__(
        self,
        reference: nn.Module | Runner,
        example_input: ExampleInput,
        *,
        backend: str | LatencyBackend = "torch",
        threads: int = DEFAULT_THREADS,
        history: int = 2000,
        backend_options: dict[str, object] | None = None,
    ) -> None:
        check_count("threads", threads, 1)
        self.backend = get_backend(backend, threads=threads, **(backend_options or {}))
        self.example_input = example_input
        self.threads = threads
        self._reference = _as_runner(reference, example_input, self.backend)
        self._ref_times: deque[float] = deque(maxlen=history)

    def settings(self) -> dict[str, object]:
        """The backend's name and settings plus the timer's threads: record them with every result."""
        return {"backend": self.backend.name, **self.backend.settings(), "threads": self.threads}

    def prepare(self, candidate: nn.Module) -> Runner:
        """Prepare a candidate on this timer's backend, to be timed several times."""
        return self.backend.prepare(candidate, self.example_input)

    def ratio(self, candidate: nn.Module | Runner, schedule: PairedSchedule | None = None) -> RatioStats:
        """Latency of ``candidate`` divided by the reference's, by interleaved calls.

        Args:
            candidate: Module (prepared here) or prepared runner.
            schedule: How to time it (None: :class:`~autoprune.measure.schedule.PairedSchedule`'s
                defaults); the fields it leaves None are the backend's ``paired_schedule``.

        Raises:
            ConfigError: a ``thread`` clock on a backend that computes off the calling thread.
        """
        plan = (schedule or PairedSchedule()).on(self.backend.paired_schedule)
        self._check_clock(plan.clock)
        cand = _as_runner(candidate, self.example_input, self.backend)
        start = time.perf_counter()
        with _timing(self.threads):
            for _ in range(plan.warmup):
                self._reference()
                cand()
            done = self._rounds(cand, plan, start)
        if plan.clock == "wall":  # reference_ms() reports wall latency
            self._ref_times.extend(done.ref_ms)
        stats = _summary(done, time.perf_counter() - start)
        logger.debug("paired ratio %.4f [%.4f, %.4f] in %d rounds", stats.ratio, stats.ci_low, stats.ci_high, stats.rounds)
        return stats

    def _check_clock(self, clock: str) -> None:
        if clock == "thread" and not self.backend.runs_on_calling_thread:
            raise ConfigError(
                f"clock: 'thread' needs the whole inference on the calling thread (threads 1 on torch or onnxruntime); "
                f"backend {self.backend.name!r} with threads {self.threads} computes elsewhere; use 'wall'"
            )

    def _rounds(self, cand: Runner, plan: PairedSchedule, start: float) -> _Rounds:
        """Time rounds until the schedule says stop."""
        done = _Rounds([], [], [])
        summarise, tick = STATISTICS[plan.statistic], CLOCKS[plan.clock]
        for r in range(plan.limit):
            ref_t, cand_t = _one_round(self._reference, cand, reference_first=r % 2 == 0, plan=plan, tick=tick)
            done.ratios.append(summarise(cand_t) / summarise(ref_t))
            done.ref_ms += ref_t
            done.cand_ms += cand_t
            if _should_stop(done.ratios, plan, start):
                break
        return done

    def reference_ms(self, *, repeats: int = 30) -> float:
        """Median reference call time seen so far (``repeats`` calls are timed if none yet)."""
        if not self._ref_times:
            stats = measure_latency(self._reference, self.example_input, warmup=3, repeats=repeats, threads=self.threads)
            return stats.median_ms
        return float(np.median(self._ref_times))


def _one_round(ref: Runner, cand: Runner, *, reference_first: bool, plan: PairedSchedule, tick: Callable[[], int]) -> tuple[list[float], list[float]]:
    """``(reference ms, candidate ms)`` of one round: single calls alternated, or one block per model."""
    ref_t: list[float] = []
    cand_t: list[float] = []
    first, second = ((ref, ref_t), (cand, cand_t)) if reference_first else ((cand, cand_t), (ref, ref_t))
    if plan.interleave == "calls":
        for _ in range(plan.calls_per_round):
            first[1].append(_time_ms(first[0], tick))
            second[1].append(_time_ms(second[0], tick))
    else:
        for run, times in (first, second):
            run()
            times.extend(_time_ms(run, tick) for _ in range(plan.calls_per_round))
    return ref_t, cand_t


def _should_stop(ratios: list[float], plan: PairedSchedule, start: float) -> bool:
    """After ``min_rounds``: the time budget is spent, or the CI is as narrow as ``rel_ci`` asks."""
    if len(ratios) < plan.min_rounds:
        return False
    if plan.time_budget_s is not None and time.perf_counter() - start >= plan.time_budget_s:
        return True
    if plan.rel_ci is not None:
        low, high = median_ci(ratios)
        return (high - low) / 2 / float(np.median(ratios)) <= plan.rel_ci
    return False


def _summary(done: _Rounds, elapsed_s: float) -> RatioStats:
    a = np.asarray(done.ratios)
    low, high = median_ci(done.ratios)
    return RatioStats(
        ratio=float(np.median(a)),
        ci_low=float(low),
        ci_high=float(high),
        cv=float(a.std(ddof=1) / a.mean()) if a.size > 1 else 0.0,
        rounds=len(done.ratios),
        ref_median_ms=float(np.median(done.ref_ms)),
        cand_median_ms=float(np.median(done.cand_ms)),
        elapsed_s=elapsed_s,
    )


def measure_latency_ratio(
    candidate: nn.Module | Runner,
    reference: nn.Module | Runner,
    example_input: ExampleInput,
    *,
    backend: str | LatencyBackend = "torch",
    threads: int = DEFAULT_THREADS,
    schedule: PairedSchedule = PairedSchedule(warmup=5),
) -> RatioStats:
    """Latency of ``candidate`` relative to ``reference`` by interleaved calls.

    A one-off form of :meth:`PairedTimer.ratio`; use a :class:`PairedTimer` when the
    same reference is compared with many candidates.

    Raises:
        ConfigError: bad backend name or thread count.
    """
    return PairedTimer(reference, example_input, backend=backend, threads=threads).ratio(candidate, schedule)


def count_macs_params(model: nn.Module, example_input: ExampleInput) -> tuple[int, int]:
    """Multiply-accumulates **per input sample** and the parameter count of a model.

    MACs are counted from one recorded forward pass (:func:`autoprune.graph.layers.record_layer_specs`)
    by :func:`autoprune.graph.layers.spec_macs`: Conv1d/2d/3d, ConvTranspose1d/2d/3d, Linear and
    ``nn.MultiheadAttention`` (projections and both attention matmuls), nothing else. This is the
    count the MAC budget uses (the graph predicts the same number without surgery), so a reported
    MAC ratio and the budget value agree exactly. Torch-Pruning's ``tp.utils.count_ops_and_params``
    is not used: it also counts bias, BatchNorm, activation and softmax operations, and counts a
    transposed convolution over its *output* positions (stride² times too many MACs for a 2-D one).

    Args:
        model: The model (run once in eval mode; its training flag is restored).
        example_input: A batch-first tensor (``(N, C, H, W)``, ``(N, F)``, ...) or a tuple of them;
            its batch size ``N`` divides out.

    Returns:
        ``(macs_per_sample, parameters)``; parameters are ``sum(p.numel())`` over ``model.parameters()``.

    Raises:
        RuntimeError: the model's forward fails on ``example_input`` (e.g. a shape mismatch); other
            exceptions of the forward pass propagate unchanged.
    """
    macs = count_macs(record_layer_specs(model, example_input))
    return int(macs), int(sum(p.numel() for p in model.parameters()))


def model_size_bytes(model: nn.Module) -> int:
    """Bytes of the model's ``state_dict`` serialised with ``torch.save``."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


__all__ = [
    "LatencyStats", "PairedTimer", "RatioStats", "count_macs_params", "fixed_threads", "measure_latency", "measure_latency_ratio",
    "model_size_bytes",
]  # fmt: skip
