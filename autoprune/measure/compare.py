"""Time models against the dense one: on the serving backend, then on eager PyTorch; and ONNX files against each other.

:func:`compare_to_dense` is the one measurement behind every "dense vs pruned" figure of
``autoprune run`` (its final table), ``estimate``, ``evaluate`` and the benchmarks. Each
candidate is timed paired against the dense model on the serving backend, then on eager
PyTorch (the reference runtime beside a serving one). Eager PyTorch is timed with no serving
session of this function alive: the serving runners are dropped and garbage collected first,
so a runtime's spinning threads do not inflate the eager figures.

:func:`compare_onnx_files` times two ONNX files (an int8 artifact against its fp32 source) on
the runtime :func:`int8_timing_backend` says will serve the int8 file.
"""

from __future__ import annotations

import gc
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from autoprune.formats.onnx import shared_pool_threads
from autoprune.graph.layers import ExampleInput
from autoprune.measure.backends import TorchEagerBackend, backend_class, get_backend
from autoprune.measure.latency import PairedTimer, RatioStats
from autoprune.measure.schedule import PairedSchedule
from autoprune.measure.settings import LatencySettings

#: Rounds of the untimed pass that warms both models up before each comparison (fresh kernels, caches).
WARM_UP_ROUNDS = 5

#: The runtime that times an int8 ONNX file when the serving backend cannot (ONNX Runtime's quantiser wrote it).
INT8_FALLBACK = "onnxruntime"


@dataclass(frozen=True)
class RuntimeComparison:
    """One model timed against the dense one on the serving backend and on eager PyTorch.

    Attributes:
        serving: Paired ratio stats on the serving backend (candidate / dense).
        serving_dense_ms: The dense model's latency there, in ms per call at the timed batch: the
            median dense call of the pairs (with several models, the median over the models of
            that figure: one dense figure for all, so their ms compare as their ratios do).
        eager: The same on eager PyTorch (the same object as ``serving`` when the backend is eager).
        eager_dense_ms: The dense model's eager latency in ms, found the same way.
        settings: The serving backend's settings (:meth:`PairedTimer.settings`).
    """

    serving: RatioStats
    serving_dense_ms: float
    eager: RatioStats
    eager_dense_ms: float
    settings: dict[str, object] = field(default_factory=dict)

    @property
    def serving_ms(self) -> float:
        """The candidate's latency on the serving backend: its ratio times the dense ms of the same pairs."""
        return self.serving.ratio * self.serving_dense_ms

    @property
    def serving_ci_ms(self) -> tuple[float, float]:
        """The 95% CI of :attr:`serving_ms`."""
        return self.serving.ci_low * self.serving_dense_ms, self.serving.ci_high * self.serving_dense_ms

    @property
    def eager_ms(self) -> float:
        """The candidate's latency on eager PyTorch."""
        return self.eager.ratio * self.eager_dense_ms


def _time_all(timer: PairedTimer, models: Sequence[nn.Module], rounds: int) -> list[RatioStats]:
    """Each model against ``timer``'s reference: a warm-up pass of :data:`WARM_UP_ROUNDS`, then ``rounds`` rounds."""
    found = []
    for model in models:
        cand = timer.prepare(model.eval())  # exported / compiled once for both passes
        timer.ratio(cand, PairedSchedule(rounds=WARM_UP_ROUNDS))
        found.append(timer.ratio(cand, PairedSchedule(rounds=rounds)))
        del cand
    return found


def compare_to_dense(
    models: Sequence[nn.Module],
    dense: nn.Module,
    example_input: ExampleInput,
    settings: LatencySettings,
    *,
    rounds: int = 30,
) -> list[RuntimeComparison]:
    """Time each model against ``dense`` on the serving backend, then on eager PyTorch.

    Every model is prepared once per runtime and timed by paired measurement (a warm-up pass of
    :data:`WARM_UP_ROUNDS` rounds, then ``rounds`` rounds; the backend's ``paired_schedule`` says
    how calls interleave). All models are timed on the serving backend first; its runners are then
    dropped and garbage collected, and eager PyTorch times them all again. On an eager backend
    (``LatencyBackend.eager``) the serving figures are the eager ones.

    Args:
        models: The candidates (e.g. ``[pruned]``; put in eval mode).
        dense: The dense reference model.
        example_input: The timed batch (a tensor ``(N, ...)`` or a tuple of them).
        settings: The serving backend, its options and threads (``batch_size`` is the example's).
        rounds: Measured paired rounds per model and runtime.

    Returns:
        One comparison per model, in order (sharing one dense figure per runtime); latencies in ms
        per call at the example's batch size.

    Raises:
        ConfigError: an unknown backend or option, or its extra missing.
        ModelError: a model the backend cannot run (e.g. its ONNX export fails).
    """
    timer = PairedTimer(dense, example_input, backend=settings.backend, threads=settings.threads, backend_options=settings.ratio_options())
    backend_settings, eager_backend = timer.settings(), timer.backend.eager
    serving = _time_all(timer, models, rounds)
    serving_ms = _dense_ms(serving)
    if eager_backend:
        return [RuntimeComparison(s, serving_ms, s, serving_ms, backend_settings) for s in serving]
    del timer  # no serving session may be alive while eager PyTorch is timed
    gc.collect()
    eager = _time_all(PairedTimer(dense, example_input, backend=TorchEagerBackend(settings.threads), threads=settings.threads), models, rounds)
    eager_ms = _dense_ms(eager)
    return [RuntimeComparison(s, serving_ms, e, eager_ms, backend_settings) for s, e in zip(serving, eager)]


def _dense_ms(stats: Sequence[RatioStats]) -> float:
    """One dense figure for every model timed on a runtime: the median of their pairs' median dense calls."""
    return float(statistics.median(s.ref_median_ms for s in stats)) if stats else float("nan")


def speed_words(speedup: float) -> str:
    """How a speed-up reads: ``"2.50x faster"`` at or above 1, ``"1.01x slower"`` below 1 (never a speed-up below 1).

    Args:
        speedup: Dense latency / other latency (a paired ratio's inverse).

    Returns:
        The phrase, with two decimals; ``"n/a"`` when ``speedup`` is not a positive finite number.
    """
    if not (speedup > 0 and speedup != float("inf")):
        return "n/a"
    return f"{speedup:.2f}x faster" if speedup >= 1.0 else f"{1.0 / speedup:.2f}x slower"


def int8_timing_backend(settings: LatencySettings) -> tuple[str, dict[str, object]]:
    """``(backend, options)`` that time an int8 QDQ ONNX file for an experiment measured with ``settings``.

    The serving backend itself when it can (``LatencyBackend.runs_int8``: ONNX Runtime, OpenVINO),
    with its ratio protocol's options (:meth:`LatencySettings.ratio_options`); otherwise ONNX Runtime, on the process's shared pool when one exists, else
    on per-session pools with spinning off (two spinning per-session pools fight for the cores).

    Raises:
        ConfigError: an unknown backend.
    """
    if backend_class(settings.backend).runs_int8:
        return settings.backend, settings.ratio_options()
    return INT8_FALLBACK, {} if shared_pool_threads() is not None else {"thread_pool": "per-session", "spinning": False}


def compare_onnx_files(
    reference: str | Path,
    candidate: str | Path,
    example_input: ExampleInput,
    *,
    threads: int = 2,
    schedule: PairedSchedule = PairedSchedule(),
    backend: str = INT8_FALLBACK,
    backend_options: dict[str, object] | None = None,
) -> RatioStats:
    """Latency of the ONNX file ``candidate`` relative to ``reference`` on a runtime, by paired timing.

    Decides, for example, whether an int8 artifact is faster than its fp32 source on this
    machine. OpenVINO runs a QDQ int8 file as int8 (its low-precision transformations read the
    Q/DQ pairs), so the same file is timed on the runtime that will serve it.

    Args:
        reference, candidate: ONNX files taking the same input.
        example_input: The input batch (its batch size is the one measured).
        threads: Intra-op threads.
        schedule: The paired schedule.
        backend: A backend that opens ONNX files (``LatencyBackend.prepare_file``).
        backend_options: That backend's options.

    Raises:
        ConfigError: the backend's extra is missing, it cannot open files, or an option is invalid.
        ModelError: the runtime cannot read or compile a file.
    """
    runtime = get_backend(backend, threads=threads, **(backend_options or {}))
    timer = PairedTimer(runtime.prepare_file(reference, example_input), example_input, backend=runtime, threads=threads)
    return timer.ratio(runtime.prepare_file(candidate, example_input), schedule)


__all__ = ["INT8_FALLBACK", "RuntimeComparison", "WARM_UP_ROUNDS", "compare_onnx_files", "compare_to_dense", "int8_timing_backend", "speed_words"]
