"""Latency, MACs, parameters and size of a model, measured the way a benchmark would.

Absolute latencies on a shared machine drift by 10-20% between back-to-back runs, so
the search compares a candidate with the dense reference by *paired* measurement:
calls of the two models are interleaved and only their ratio is reported
(:class:`PairedTimer`, :func:`measure_latency_ratio`). Everything runs with a fixed
thread count (:func:`fixed_threads`) on a named backend (:func:`get_backend`, defined
with the backend protocol and registry in :mod:`autoprune.measure.backends`).
The latency lookup table that predicts latency without running a model lives in
:mod:`autoprune.measure.table`.
"""

from __future__ import annotations

import gc
import inspect
import io
import logging
import math
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
from autoprune.measure.backends import (
    BACKENDS,
    DEFAULT_THREADS,
    LatencyBackend,
    Runner,
    TorchEagerBackend,
    backend_settings,
    get_backend,
    register_backend,
)

logger = logging.getLogger(__name__)


def backend_option_names(name: str) -> tuple[str, ...] | None:
    """The options (``latency.backend_options`` keys) the backend registered as ``name`` accepts.

    Read from the signature of its factory, as :func:`get_backend` passes them (``threads`` is
    a field of its own and not listed).

    Returns:
        The option names, or None when the factory takes any keyword (``**options``).

    Raises:
        ConfigError: unknown backend, or its optional extra is not installed (naming it).
    """
    factory = BACKENDS.get(name)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return ()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return tuple(k for k, p in params.items() if k != "threads" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))


@contextmanager
def fixed_threads(n: int) -> Iterator[None]:
    """Run the body with ``torch.set_num_threads(n)``, then restore the previous count.

    Raises:
        ConfigError: ``n`` is not a positive integer.
    """
    _check_int("threads", n, 1)
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


def _check_int(field: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{field}: expected an integer >= {minimum}, got {value!r}")


def _time_ms(run: Runner, clock: Callable[[], int] = time.perf_counter_ns) -> float:
    start = clock()
    run()
    return (clock() - start) / 1e6


#: Clocks of :meth:`PairedTimer.ratio`: wall time, or CPU time of the calling thread / whole process.
CLOCKS: dict[str, Callable[[], int]] = {"wall": time.perf_counter_ns, "thread": time.thread_time_ns, "process": time.process_time_ns}


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
    _check_int("warmup", warmup, 0)
    _check_int("repeats", repeats, 1)
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


def _median_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Order-statistic confidence interval for the median (binomial, no distribution assumed)."""
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


_STATISTICS: dict[str, Callable[[Sequence[float]], float]] = {"min": min, "median": lambda v: float(np.median(v))}


class PairedTimer:
    """Measures latency ratios to one reference model, prepared once.

    Each round times ``calls_per_round`` (reference, candidate) pairs back to back;
    the first model alternates between rounds to cancel order effects. The
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
        backend_options: Backend settings by keyword (see :func:`get_backend`).

    Raises:
        ConfigError: bad backend name, option or thread count, or the backend's extra is missing.
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
        _check_int("threads", threads, 1)
        self.backend = get_backend(backend, threads=threads, **(backend_options or {}))
        self.example_input = example_input
        self.threads = threads
        self._reference = _as_runner(reference, example_input, self.backend)
        self._ref_times: deque[float] = deque(maxlen=history)

    def settings(self) -> dict[str, object]:
        """The backend's settings (:func:`backend_settings`) plus the timer's threads: record them with every result."""
        return {**backend_settings(self.backend), "threads": self.threads}

    def prepare(self, candidate: nn.Module) -> Runner:
        """Prepare a candidate on this timer's backend, to be timed several times."""
        return self.backend.prepare(candidate, self.example_input)

    def ratio(
        self,
        candidate: nn.Module | Runner,
        *,
        warmup: int = 3,
        rounds: int = 15,
        calls_per_round: int | None = None,
        min_rounds: int = 5,
        max_rounds: int | None = None,
        rel_ci: float | None = None,
        time_budget_s: float | None = None,
        interleave: str | None = None,
        statistic: str = "min",
        clock: str = "wall",
    ) -> RatioStats:
        """Latency of ``candidate`` divided by the reference's, by interleaved calls.

        At the defaults this costs about 100 calls (0.3-0.5 s for a ResNet-20 at batch 1
        and one thread on a quiet core).

        Args:
            candidate: Module (prepared here) or prepared runner.
            warmup: Untimed (reference, candidate) pairs first.
            rounds: Rounds to measure when ``rel_ci`` is None.
            calls_per_round: Calls of each model per round (None: the backend's
                ``paired_schedule``, else 3).
            min_rounds: With ``rel_ci`` or ``time_budget_s``, never stop before this many rounds.
            max_rounds: With ``rel_ci``, stop after this many rounds anyway (default ``rounds``).
            rel_ci: Stop as soon as the CI half-width relative to the ratio is at most this.
            time_budget_s: Stop after ``min_rounds`` once this much wall time has passed
                (bounds the cost when the machine is overloaded).
            interleave: None: the backend's ``paired_schedule`` (``blocks`` on the serving
                runtimes, whose ratio it measured least noisy and closest to sequential
                timing), else ``calls``. ``calls``: each round alternates single reference and candidate
                calls; ``blocks``: each round runs one untimed call and then
                ``calls_per_round`` timed calls of one model, then the same for the other
                (a runtime's caches and idle threads settle on one model before timing it).
            statistic: Per-round summary of each model's calls: ``min`` (the least disturbed
                call) or ``median``.
            clock: ``wall`` (latency as served); ``thread``: CPU time of the calling thread,
                which excludes the time other processes hold the core (on an overloaded
                machine it cut the ratio's CV from 5.4% to 2.4% on ONNX Runtime), valid only
                when the whole inference runs on the calling thread (threads 1 on ``torch`` or
                ``onnxruntime``: the backend's ``runs_on_calling_thread``); ``process``: CPU
                time of all the process's threads (counts idle spinning, so only for
                non-spinning runtimes).

        Raises:
            ConfigError: invalid counts, ``rel_ci``, ``time_budget_s``, ``interleave``,
                ``statistic`` or ``clock`` (``thread`` on a backend that computes off the calling thread).
        """
        _check_int("warmup", warmup, 0)
        _check_int("rounds", rounds, 1)
        schedule = {"interleave": "calls", "calls_per_round": 3, **getattr(self.backend, "paired_schedule", {})}
        interleave = schedule["interleave"] if interleave is None else interleave
        calls_per_round = schedule["calls_per_round"] if calls_per_round is None else calls_per_round
        _check_int("calls_per_round", calls_per_round, 1)
        _check_int("min_rounds", min_rounds, 1)
        if max_rounds is None:
            max_rounds = max(rounds, min_rounds)
        _check_int("max_rounds", max_rounds, min_rounds)
        if rel_ci is not None and not (isinstance(rel_ci, (int, float)) and rel_ci > 0):
            raise ConfigError(f"rel_ci: expected a positive fraction such as 0.03 or None, got {rel_ci!r}")
        if time_budget_s is not None and not (isinstance(time_budget_s, (int, float)) and time_budget_s > 0):
            raise ConfigError(f"time_budget_s: expected a positive number of seconds or None, got {time_budget_s!r}")
        if interleave not in ("calls", "blocks"):
            raise ConfigError(f"interleave: expected 'calls' or 'blocks', got {interleave!r}")
        if statistic not in _STATISTICS:
            raise ConfigError(f"statistic: expected one of {', '.join(_STATISTICS)}, got {statistic!r}")
        summarise = _STATISTICS[statistic]
        if clock not in CLOCKS:
            raise ConfigError(f"clock: expected one of {', '.join(CLOCKS)}, got {clock!r}")
        if clock == "thread" and not getattr(self.backend, "runs_on_calling_thread", False):
            raise ConfigError(
                f"clock: 'thread' needs the whole inference on the calling thread (threads 1 on torch or onnxruntime); "
                f"backend {self.backend.name!r} with threads {self.threads} computes elsewhere; use 'wall'"
            )
        tick = CLOCKS[clock]
        cand = _as_runner(candidate, self.example_input, self.backend)
        ref = self._reference
        limit = rounds if rel_ci is None else max_rounds

        start = time.perf_counter()
        ratios: list[float] = []
        ref_all: list[float] = []
        cand_all: list[float] = []
        with _timing(self.threads):
            for _ in range(warmup):
                ref()
                cand()
            for r in range(limit):
                ref_t, cand_t = [], []
                first, second = (ref, cand) if r % 2 == 0 else (cand, ref)
                first_t, second_t = (ref_t, cand_t) if r % 2 == 0 else (cand_t, ref_t)
                if interleave == "calls":
                    for _ in range(calls_per_round):
                        first_t.append(_time_ms(first, tick))
                        second_t.append(_time_ms(second, tick))
                else:
                    for run, times in ((first, first_t), (second, second_t)):
                        run()
                        times.extend(_time_ms(run, tick) for _ in range(calls_per_round))
                ratios.append(summarise(cand_t) / summarise(ref_t))
                ref_all += ref_t
                cand_all += cand_t
                if len(ratios) < min_rounds:
                    continue
                if time_budget_s is not None and time.perf_counter() - start >= time_budget_s:
                    break
                if rel_ci is not None:
                    low, high = _median_ci(ratios)
                    if (high - low) / 2 / float(np.median(ratios)) <= rel_ci:
                        break
        if clock == "wall":  # reference_ms() reports wall latency
            self._ref_times.extend(ref_all)

        a = np.asarray(ratios)
        low, high = _median_ci(ratios)
        cv = float(a.std(ddof=1) / a.mean()) if a.size > 1 else 0.0
        stats = RatioStats(
            ratio=float(np.median(a)),
            ci_low=float(low),
            ci_high=float(high),
            cv=cv,
            rounds=len(ratios),
            ref_median_ms=float(np.median(ref_all)),
            cand_median_ms=float(np.median(cand_all)),
            elapsed_s=time.perf_counter() - start,
        )
        logger.debug("paired ratio %.4f [%.4f, %.4f] in %d rounds", stats.ratio, low, high, stats.rounds)
        return stats

    def reference_ms(self, *, repeats: int = 30) -> float:
        """Median reference call time seen so far (``repeats`` calls are timed if none yet)."""
        if not self._ref_times:
            stats = measure_latency(self._reference, self.example_input, warmup=3, repeats=repeats, threads=self.threads)
            return stats.median_ms
        return float(np.median(self._ref_times))


def measure_latency_ratio(
    candidate: nn.Module | Runner,
    reference: nn.Module | Runner,
    example_input: ExampleInput,
    *,
    backend: str | LatencyBackend = "torch",
    threads: int = DEFAULT_THREADS,
    warmup: int = 5,
    rounds: int = 15,
    calls_per_round: int | None = None,
    min_rounds: int = 5,
    max_rounds: int | None = None,
    rel_ci: float | None = None,
    time_budget_s: float | None = None,
) -> RatioStats:
    """Latency of ``candidate`` relative to ``reference`` by interleaved calls.

    A one-off form of :meth:`PairedTimer.ratio`; use a :class:`PairedTimer` when the
    same reference is compared with many candidates.

    Raises:
        ConfigError: bad backend name, counts or ``rel_ci``.
    """
    timer = PairedTimer(reference, example_input, backend=backend, threads=threads)
    return timer.ratio(
        candidate,
        warmup=warmup,
        rounds=rounds,
        calls_per_round=calls_per_round,
        min_rounds=min_rounds,
        max_rounds=max_rounds,
        rel_ci=rel_ci,
        time_budget_s=time_budget_s,
    )


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
    "backend_option_names",
    "BACKENDS",
    "CLOCKS",
    "ExampleInput",
    "LatencyBackend",
    "LatencyStats",
    "PairedTimer",
    "RatioStats",
    "Runner",
    "TorchEagerBackend",
    "backend_settings",
    "count_macs_params",
    "DEFAULT_THREADS",
    "fixed_threads",
    "get_backend",
    "measure_latency",
    "measure_latency_ratio",
    "model_size_bytes",
    "register_backend",
]
