"""Dense-vs-pruned comparisons timed in fresh processes: the final table's and ``estimate``'s figures.

:func:`compare_in_fresh_process` is :func:`autoprune.measure.compare.compare_to_dense` with every
ratio taken by :func:`autoprune.measure.fresh.remeasure_in_fresh_process` in new interpreters:
the backend's ratio protocol pooled over :data:`~autoprune.measure.fresh.FRESH_PROCESSES`
processes, the serving settings for the absolute milliseconds, and eager PyTorch in a process of
its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from autoprune.graph.layers import ExampleInput
from autoprune.measure.backends import backend_class
from autoprune.measure.compare import RuntimeComparison
from autoprune.measure.fresh import FRESH_PROCESSES, MAX_FRESH_PROCESSES, FreshMeasurement, FreshRatio, ZooModel, remeasure_in_fresh_process
from autoprune.measure.latency import RatioStats
from autoprune.measure.settings import LatencySettings

#: Paired rounds of the serving-settings child that gives the absolute milliseconds (:func:`compare_in_fresh_process`).
SERVING_ROUNDS = 10


def _stats(r: FreshRatio, reference_ms: float) -> RatioStats:
    """A child's figure as :class:`RatioStats` (the child does not report the CV or the time spent: NaN)."""
    nan = float("nan")
    return RatioStats(r.ratio, r.ci_low, r.ci_high, cv=nan, rounds=r.rounds, ref_median_ms=reference_ms, cand_median_ms=r.ratio * reference_ms,
                      elapsed_s=nan)


def compare_in_fresh_process(
    models: Sequence[nn.Module], dense: nn.Module, example_input: ExampleInput, settings: LatencySettings, *, zoo: ZooModel,
    rounds: int = 30, timeout_s: float | None = None,
) -> list[RuntimeComparison]:
    """:func:`~autoprune.measure.compare.compare_to_dense` in fresh processes: the serving backend in one, eager PyTorch in another.

    No session of the caller (e.g. a search's) and none of the serving runtime is alive while
    eager PyTorch is timed, and the serving ratios come from the same protocol as a search's
    finalists (:mod:`autoprune.search.finalists`): :func:`remeasure_in_fresh_process` with the
    backend's ratio protocol, ``settings.warmup`` warm-up rounds and ``rounds`` rounds, in
    :data:`~autoprune.measure.fresh.FRESH_PROCESSES` processes (up to
    :data:`~autoprune.measure.fresh.MAX_FRESH_PROCESSES` while they disagree by more than ``settings.rel_ci``). When that
    protocol is not how the backend serves (ONNX Runtime: shared pool for ratios, per-session
    spinning pools as served), one more child times the models with the serving settings
    (:data:`SERVING_ROUNDS` rounds) for the dense model's absolute milliseconds, and those
    settings are the ones recorded (the ratio protocol's under ``ratio_protocol``).

    Args:
        models: The candidates; dense: the reference; both rebuilt in the child by ``zoo``.
        example_input: The timed batch.
        settings: The serving backend, its options and threads.
        zoo: How the child rebuilds the modules.
        rounds: Measured paired rounds per model and runtime.
        timeout_s: Give up on a child after this many seconds (None: wait).

    Returns:
        One comparison per model, in order (one dense figure per runtime).

    Raises:
        As :func:`remeasure_in_fresh_process`.
    """
    def timed(backend: str, options: Mapping[str, Any], protocol: str = "ratio", n: int = rounds, processes: int = 1) -> FreshMeasurement:
        return remeasure_in_fresh_process(dense, list(models), example_input, backend=backend, threads=settings.threads, backend_options=options,
                                          rounds=n, warmup_rounds=settings.warmup, zoo=zoo, timeout_s=timeout_s, protocol=protocol,
                                          processes=processes, max_processes=max(processes, MAX_FRESH_PROCESSES) if processes > 1 else None,
                                          rel_ci=settings.rel_ci if processes > 1 else None)

    factory, options = backend_class(settings.backend), settings.options()
    ratio = timed(settings.backend, options, processes=FRESH_PROCESSES)
    dense_ms, recorded = ratio.dense_ms, ratio.settings
    if factory.ratio_options(options, timing_only=True) != dict(options):  # the ratio protocol is not how it serves: absolute ms as served
        served = timed(settings.backend, options, "serving", SERVING_ROUNDS)
        dense_ms, recorded = served.dense_ms, {**served.settings, "ratio_protocol": ratio.settings}
    s_stats = [_stats(r, dense_ms) for r in ratio.ratios]
    if factory.eager:
        return [RuntimeComparison(s, dense_ms, s, dense_ms, recorded) for s in s_stats]
    eager = timed("torch", {})
    return [RuntimeComparison(s, dense_ms, _stats(e, eager.dense_ms), eager.dense_ms, recorded)
            for s, e in zip(s_stats, eager.ratios)]


__all__ = ["SERVING_ROUNDS", "compare_in_fresh_process"]
