"""The latency lookup table a :class:`~autoprune.objective.evaluator.PolicyEvaluator` predicts with.

On eager PyTorch (``torch``) it is the per-layer micro-benchmark table
(:class:`autoprune.measure.table.LatencyTable`) fitted to a few paired measurements of pruned
variants. On a serving runtime (``onnxruntime``, ``openvino``, or any other backend) per-layer eager
timings do not model a runtime that fuses conv+BN+activation, so the table is fitted to
whole-model paired measurements *on that backend*
(:func:`autoprune.measure.runtime_table.calibrate_on_backend`, cached on disk per
architecture, backend settings, batch and machine).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from autoprune.errors import ModelError, PolicyError
from autoprune.graph.policy import Policy
from autoprune.graph.prunable import PrunableGraph
from autoprune.graph.surgery import apply_policy
from autoprune.measure.latency import PairedTimer
from autoprune.measure.runtime_table import DEFAULT_CACHE_DIR, FittedLatencyTable, calibrate_on_backend
from autoprune.measure.table import LatencyTable

log = logging.getLogger(__name__)

#: Random calibration policies of the per-backend table (on top of its 6 uniform ones): 30
#: variants in all, each exported, opened and timed once per (model, backend settings, batch, machine).
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

    Returns:
        ``(table, failures)``: the fitted table and one line per variant that failed (skipped).

    Raises:
        ModelError: every pruned variant failed.
    """
    t0 = time.perf_counter()
    table = LatencyTable(threads=threads)
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
            ms = timer.ratio(pruned.eval(), rounds=10).ratio * dense_ms
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

    Follows :func:`autoprune.measure.runtime_table.calibrate_on_backend` (nn-Meter-style
    regression on layer-shape features, fitted to paired whole-model measurements).

    Args:
        model, graph: The dense model (``timer``'s reference) and its graph.
        timer: A :class:`PairedTimer` on the serving backend.
        batch_size: The timed batch.
        max_ratio, round_to: The search's pruning limits.
        n_random: Random calibration policies.
        cache_dir: Folder of cached tables (None: calibrate, never write).

    Returns:
        ``(table, info)`` with ``info`` = ``{"kind": "fitted", "from_cache": bool, "variants": int, "seconds": float}``.

    Raises:
        ModelError: a calibration variant cannot run on the backend (e.g. its export fails).
    """
    t0 = time.perf_counter()
    table, cached = calibrate_on_backend(
        model, graph, timer, batch_size=batch_size, max_ratio=max_ratio, round_to=round_to, n_random=n_random, cache_dir=cache_dir,
    )
    info = {"kind": "fitted", "from_cache": cached, "variants": len(table), "seconds": time.perf_counter() - t0}
    log.info("latency table on %s: %s (%d variants, %.1fs)", timer.backend.name, "from cache" if cached else "calibrated", len(table), info["seconds"])
    return table, info


__all__ = ["BACKEND_CALIBRATION_RANDOM", "backend_table", "eager_table"]
