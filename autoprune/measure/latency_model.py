"""The latency model a :class:`~autoprune.objective.evaluator.PolicyEvaluator` asks: predict a ratio, measure a candidate.

One :class:`LatencyModel` holds everything the search knows about latency: the backend and its
paired timer with the dense model as reference, the dense latency in ms, the lookup table (and
how it was made) and the settings. The evaluator builds it with one call
(:meth:`LatencyModel.build`) and then only asks it to predict a policy's ratio without surgery
(:meth:`~LatencyModel.predict_ratio`) and to estimate a pruned candidate's ratio with its
uncertainty (:meth:`~LatencyModel.estimate`: the prediction updated by a paired measurement,
:func:`autoprune.measure.uncertainty.combine`); how latency is obtained stays here. Before
another runtime is timed in the same process, :meth:`~LatencyModel.close` releases the
backend's session.

The lookup table depends on what the backend is. On eager PyTorch (``LatencyBackend.eager``) it
is the per-layer micro-benchmark table (:class:`autoprune.measure.table.LatencyTable`) fitted to
a few paired measurements of pruned variants. On any other runtime per-layer eager timings do not
model a runtime that fuses conv+BN+activation, so the table is fitted to whole-model paired
measurements *on that backend* (:func:`autoprune.measure.variant_cache.calibrate_on_backend`,
cached on disk per architecture, backend settings, batch and machine; its variant timings are
reused by a later model made of the same layer specs).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from autoprune.errors import ModelError, PolicyError
from autoprune.graph.check import default_cache_dir
from autoprune.graph.layers import ExampleInput, LayerSpec
from autoprune.graph.policy import Policy
from autoprune.graph.prunable import PrunableGraph
from autoprune.graph.surgery import apply_policy
from autoprune.measure.backends import LatencyBackend, Runner, settings_label
from autoprune.measure.latency import PairedTimer, RatioStats
from autoprune.measure.layer_cache import LayerTimingCache, timing_context
from autoprune.measure.runtime_table import DEFAULT_CACHE_DIR, FittedLatencyTable
from autoprune.measure.schedule import PairedSchedule
from autoprune.measure.settings import LatencySettings
from autoprune.measure.table import LatencyTable
from autoprune.measure.uncertainty import LatencyEstimate, ResidualPrior, combine
from autoprune.measure.variant_cache import calibrate_on_backend

log = logging.getLogger(__name__)

#: Random calibration policies of the per-backend table (on top of its 6 uniform ones): 30
#: variants in all, each exported, opened and timed once per (model, backend settings, batch, machine);
#: a model whose layer specs overlap a calibrated one's times 4 (:data:`autoprune.measure.variant_cache.REUSE_RANDOM`).
BACKEND_CALIBRATION_RANDOM = 24


def eager_table(
    model: nn.Module,
    graph: PrunableGraph,
    timer: PairedTimer,
    *,
    dense_ms: float,
    threads: int,
    batch_size: int,
    max_ratio: float,
    round_to: int | None,
    unit_names: list[str],
    block_names: list[str],
    n_random: int = 8,
    cache_dir: str | Path | None = None,
) -> tuple[LatencyTable, list[str]]:
    """Fit the eager micro-benchmark table on dense, uniform and random pruned variants, measured paired.

    Random variants (odd channel counts, random block drops) look like what searchers
    propose, so the affine fit is not biased towards round uniform models.

    Args:
        model, graph: The dense model and its graph.
        timer: A :class:`PairedTimer` with the dense model as reference.
        dense_ms: The dense model's latency (ms per call at ``batch_size``).
        threads, batch_size: What is timed.
        max_ratio, round_to: The search's pruning limits.
        unit_names, block_names: Units and droppable blocks offered to the search.
        n_random: Random variants.
        cache_dir: Folder of per-layer timings shared across models (:mod:`autoprune.measure.layer_cache`;
            None: time every spec here, write nothing). The whole-model variant measurements are of this
            model and are not cached.

    Returns:
        ``(table, failures)``: the fitted table and one line per variant that failed (skipped); the
        table's ``cache`` counts the timings reused and measured.

    Raises:
        ModelError: every pruned variant failed.
    """
    t0 = time.perf_counter()
    table = LatencyTable(threads=threads)
    if cache_dir is not None:
        context = timing_context(timer.settings(), threads=threads, warmup=table.warmup, repeats=table.repeats, passes=table.passes)
        table.cache = LayerTimingCache(Path(cache_dir) / "layers", context)
    rng = np.random.default_rng(12345)
    variants = [Policy(), Policy.uniform(unit_names, min(0.5, max_ratio))]
    variants.append(Policy.uniform(unit_names, min(0.25, max_ratio), drop=block_names[::2]))
    for _ in range(n_random):
        ratios = {u: float(rng.uniform(0.0, max_ratio)) for u in unit_names}
        drop = tuple(b for b in block_names if rng.random() < 0.25)
        variants.append(Policy(ratios, drop))
    samples, failures = [], []
    for pol in variants:
        specs = graph.specs_for(pol.ratios, pol.drop, round_to=round_to, batch_size=batch_size)
        if not pol.ratios and not pol.drop:
            samples.append((specs, dense_ms))
            continue
        try:
            pruned = apply_policy(model, pol, graph=graph, importance="l1", round_to=round_to)
            ms = timer.ratio(pruned.eval(), PairedSchedule(rounds=10)).ratio * dense_ms
        except (PolicyError, KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001 - one candidate failing must not end the job
            failures.append(f"{type(e).__name__}: {' '.join(str(e).split())[:200]}")
            log.warning("latency calibration: candidate %s failed (%s); skipped", pol.to_dict(), failures[-1])
            continue
        samples.append((specs, ms))
    if len(samples) == 1 and len(variants) > 1:
        raise ModelError(f"no pruned candidate of the model can be built: every calibration variant failed (first: {failures[0]})")
    table.fit(samples)
    log.info("latency table calibrated on %d models in %.1fs", len(samples), time.perf_counter() - t0)
    return table, failures


def backend_table(
    model: nn.Module,
    graph: PrunableGraph,
    timer: PairedTimer,
    *,
    batch_size: int,
    max_ratio: float,
    round_to: int | None,
    n_random: int = BACKEND_CALIBRATION_RANDOM,
    cache_dir: str | Path | None = DEFAULT_CACHE_DIR,
) -> tuple[FittedLatencyTable, dict[str, Any]]:
    """The per-backend fitted table of ``model`` on ``timer``'s backend, from the disk cache or calibrated now.

    Follows :func:`autoprune.measure.variant_cache.calibrate_on_backend` (nn-Meter-style
    regression on layer-shape features, fitted to paired whole-model measurements, pooled with the
    cached variants of models made of the same layer specs).

    Args:
        model, graph: The dense model (``timer``'s reference) and its graph.
        timer: A :class:`PairedTimer` on the serving backend.
        batch_size: The timed batch.
        max_ratio, round_to: The search's pruning limits.
        n_random: Random calibration policies.
        cache_dir: Folder of cached tables and variant timings (None: calibrate alone, never write).

    Returns:
        ``(table, info)`` with ``info`` = ``{"kind": "fitted", "from_cache": bool, "variants": int, "seconds": float,
        "donors": [...], "cache": {"unit": "variant timings", "reused", "measured", "seconds_saved"}}``.

    Raises:
        ModelError: a calibration variant cannot run on the backend (e.g. its export fails).
    """
    t0 = time.perf_counter()
    table, got = calibrate_on_backend(
        model, graph, timer, batch_size=batch_size, max_ratio=max_ratio, round_to=round_to, n_random=n_random, cache_dir=cache_dir,
    )
    info = {"kind": "fitted", "from_cache": got["from_cache"], "variants": len(table), "seconds": time.perf_counter() - t0, "donors": got["donors"],
            "cache": {"unit": "variant timings", **{k: got[k] for k in ("reused", "measured", "seconds_saved")}}}
    log.info("latency table on %s: %s (%d variants%s, %.1fs)", timer.backend.name, "from cache" if got["from_cache"] else "calibrated", len(table),
             f" + {got['reused']} reused from {len(got['donors'])} other model(s)" if got["donors"] else "", info["seconds"])
    return table, info


def _calibrated_table(
    model: nn.Module, graph: PrunableGraph, timer: PairedTimer, settings: LatencySettings, *, dense_ms: float, max_ratio: float,
    round_to: int | None, unit_names: list[str], block_names: list[str], cache: str | Path | None,
) -> tuple[LatencyTable | FittedLatencyTable, dict[str, Any], list[str]]:
    """``(table, info, failures)``: eager micro-benchmarks on an eager backend, else a table fitted on the backend itself.

    ``info["cache"]`` says what the cache gave: ``unit`` (``layer timings`` or ``variant timings``), ``reused`` and
    ``measured`` (counts of that unit) and ``seconds_saved`` (the stored measurement seconds of the reused ones).
    """
    if not settings.table_cache:
        cache = None
    elif cache == "auto":
        cache = default_cache_dir().parent / "latency-tables"
    if timer.backend.eager:
        table, failures = eager_table(model, graph, timer, dense_ms=dense_ms, threads=settings.threads, batch_size=settings.batch_size,
                                      max_ratio=max_ratio, round_to=round_to, unit_names=unit_names, block_names=block_names, cache_dir=cache)
        counts = table.cache.summary() if table.cache is not None else {"reused": 0, "measured": len(table), "seconds_saved": 0.0}
        return table, {"kind": "eager micro-benchmarks", "cache": {"unit": "layer timings", **counts}}, failures
    fitted, info = backend_table(model, graph, timer, batch_size=settings.batch_size, max_ratio=max_ratio, round_to=round_to, cache_dir=cache)
    return fitted, info, []


@dataclass
class LatencyModel:
    """What a search knows about latency on one backend, for one dense model at one batch size.

    Build it with :meth:`build`. Latencies are milliseconds per call at ``settings.batch_size``;
    ratios are fractions of the dense model's latency.

    Attributes:
        settings: How latency is measured (backend, batch, threads, schedule).
        timer: The paired timer on the backend, the dense model its reference.
        dense_ms: The dense model's latency in milliseconds per call.
        table: The lookup table that predicts ratios without surgery.
        table_info: How the table was made (``kind``: ``eager micro-benchmarks``, ``fitted`` on the
            backend, or ``given``; ``from_cache``, ``variants``, ``seconds`` for fitted tables; ``cache``:
            what the latency-table cache gave at build time, see :meth:`cache_summary`).
        calibration_failures: One line per calibration variant that failed (skipped).
        backend_settings: The backend's settings (:meth:`PairedTimer.settings`: name, version,
            threads, ...), recorded with every result.
        graph, round_to: The dense model's graph and the channel multiple of surgery (predictions
            use the same shapes the surgery will produce).
        dense_specs: The dense model's layer specs at ``settings.batch_size`` (the denominator of predictions).
        prior: The table's error learned from every candidate :meth:`estimate` measured (the prior's spread).
    """

    settings: LatencySettings
    timer: PairedTimer
    dense_ms: float
    table: LatencyTable | FittedLatencyTable
    graph: PrunableGraph
    round_to: int | None = None
    table_info: dict[str, Any] = field(default_factory=lambda: {"kind": "given"})
    calibration_failures: list[str] = field(default_factory=list)
    backend_settings: dict[str, object] = field(default_factory=dict)
    dense_specs: list[LayerSpec] = field(default_factory=list)
    prior: ResidualPrior = field(default_factory=ResidualPrior)

    @classmethod
    def build(
        cls,
        model: nn.Module,
        graph: PrunableGraph,
        settings: LatencySettings,
        *,
        example_input: ExampleInput,
        max_ratio: float,
        round_to: int | None = None,
        unit_names: Sequence[str] | None = None,
        block_names: Sequence[str] = (),
        table: LatencyTable | FittedLatencyTable | None = None,
        table_cache: str | Path | None = "auto",
    ) -> LatencyModel:
        """Prepare the dense model on the backend, time it, and calibrate (or reuse) the lookup table.

        Args:
            model: The dense model (in eval mode; never modified).
            graph: Its graph.
            settings: The backend, batch size, threads and schedule.
            example_input: A batch of ``settings.batch_size`` inputs (the timed shape).
            max_ratio, round_to: The search's pruning limits.
            unit_names, block_names: Units and droppable blocks offered to the search (default: the graph's units, no blocks).
            table: A calibrated table to use as it is (``table_info`` kind ``given``).
            table_cache: Folder caching the latency tables and their measurements ("auto":
                ``latency-tables`` beside the surgery-check cache; None: calibrate, write nothing).

        Raises:
            ConfigError: a bad backend name, option, thread count or schedule field, or a missing extra.
            ModelError: the backend cannot run the model, or no pruned calibration variant can be built.
        """
        settings.schedule()  # a bad count or rel_ci fails before anything is timed
        timer = PairedTimer(model, example_input, backend=settings.backend, threads=settings.threads, backend_options=settings.ratio_options())
        dense_ms = timer.reference_ms(repeats=30)
        info: dict[str, Any] = {"kind": "given"}
        failures: list[str] = []
        if table is None:
            units = list(graph.unit_names if unit_names is None else unit_names)
            table, info, failures = _calibrated_table(model, graph, timer, settings, dense_ms=dense_ms, max_ratio=max_ratio,
                                                      round_to=round_to, unit_names=units, block_names=list(block_names), cache=table_cache)
        built = cls(settings, timer, dense_ms, table, graph, round_to, info, failures, timer.settings(),
                    graph.specs_for({}, (), batch_size=settings.batch_size))
        if "cache" in info:
            c = built.cache_summary()
            log.info("latency table cache (%s): %d reused (%.3g s of measurement saved), %d measured", c["unit"], c["reused"], c["seconds_saved"], c["measured"])
        return built

    def cache_summary(self) -> dict[str, Any]:
        """What the latency-table cache has given so far (the search keeps timing new layer specs on eager tables).

        Returns:
            ``{"unit": "layer timings" | "variant timings" | "none", "reused": count, "measured": count,
            "seconds_saved": s}``: on eager tables the stored measurement times of the reused layer timings;
            on fitted tables the stored calibration time of a reused table, or the variants a pooled fit
            did not time times its mean seconds per variant (:func:`~autoprune.measure.variant_cache.calibrate_on_backend`).
        """
        cache = getattr(self.table, "cache", None)
        if isinstance(cache, LayerTimingCache):
            return {"unit": "layer timings", **cache.summary()}
        if isinstance(self.table, LatencyTable):
            return {"unit": "layer timings", "reused": 0, "measured": len(self.table), "seconds_saved": 0.0}
        return dict(self.table_info.get("cache", {"unit": "none", "reused": 0, "measured": 0, "seconds_saved": 0.0}))

    @property
    def backend(self) -> LatencyBackend:
        """The backend that times (ask it what it can do)."""
        return self.timer.backend

    @property
    def label(self) -> str:
        """One line naming the backend and its settings (recorded as ``Metrics.backend``)."""
        return settings_label(self.backend_settings)

    def predict_ratio(self, ratios: dict[str, float], drop: Sequence[str] = ()) -> float:
        """Latency ratio to dense that the lookup table predicts for a policy, without surgery.

        Raises:
            PolicyError: a ratio is out of range or would remove every channel of a unit.
        """
        specs = self.graph.specs_for(ratios, drop, round_to=self.round_to, batch_size=self.settings.batch_size)
        return self.table.predict_ratio(specs, self.dense_specs)

    def measure(self, candidate: nn.Module | Runner, schedule: PairedSchedule | None = None) -> RatioStats:
        """Latency of a pruned candidate relative to dense, by paired measurement on the backend.

        Args:
            candidate: The pruned model (eval mode) or a runner prepared on :attr:`backend`.
            schedule: The schedule (None: the settings' search schedule, :meth:`LatencySettings.schedule`).
        """
        return self.timer.ratio(candidate, self.settings.schedule() if schedule is None else schedule)

    def estimate(self, candidate: nn.Module | Runner, predicted: float, schedule: PairedSchedule | None = None) -> LatencyEstimate:
        """A candidate's latency ratio with its ~95% interval: the table's ``predicted`` ratio updated by a paired measurement.

        The measurement follows ``schedule`` (None: the settings' search schedule, which stops once
        the interval's half-width is ``rel_ci`` of the ratio). The candidate's residual against the
        table is then learned (:attr:`prior`), so later predictions count as a prior as wide as the
        table's error (:func:`autoprune.measure.uncertainty.combine`).

        Args:
            candidate: The pruned model (eval mode) or a runner prepared on :attr:`backend`.
            predicted: :meth:`predict_ratio` of its policy (NaN: the measurement alone).
            schedule: The paired schedule.
        """
        stats = self.measure(candidate, schedule)
        found = combine(predicted, stats, self.prior)
        self.prior.add(predicted, stats.ratio)
        return found

    def close(self) -> None:
        """Release the backend's session and thread pools (the timer can time nothing afterwards), and collect them.

        Call it before timing eager PyTorch (or another runtime) in this process: a live spinning
        session of this backend would compete for the cores and inflate those figures.
        """
        self.timer.close()
        gc.collect()


__all__ = ["BACKEND_CALIBRATION_RANDOM", "LatencyModel", "backend_table", "eager_table"]
