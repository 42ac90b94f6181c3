"""Calibrating a serving runtime's latency table, reusing the variant timings of models made of the same layers.

**What is reused, and why at this granularity.** On a serving runtime the latency table
(:class:`~autoprune.measure.runtime_table.FittedLatencyTable`) is a regression on layer-spec
features fitted to pruned variants of the model timed *as whole models* against its dense
model, because the runtime fuses conv+BN+activation and picks kernels by shape, so per-layer
timings in isolation do not add up to its latency (``experiments/results/runtimes.md``). A
variant's measurement is a pair ``(features of its layer specs, latency ratio to its own
dense model)``; this module stores every such pair, per model, keyed by what the timing
depends on. A new model whose dense layer specs are mostly those of a model calibrated
before (same kinds, channels, kernels and shapes: ResNet-32 after ResNet-20, Jaccard overlap
of their distinct specs at least :data:`REUSE_OVERLAP`) is then fitted on that model's
variants pooled with :data:`REUSE_RANDOM` random variants of its own (plus the dense,
uniform and drop ones), 9 timed variants instead of 29: the per-feature costs are shared,
and each donor model gets a fitted scale (its dense latency in the new model's units,
:meth:`FittedLatencyTable.fit <autoprune.measure.runtime_table.FittedLatencyTable.fit>`), so
only paired ratios are pooled, never absolute milliseconds timed at different moments. This
follows NetAdapt's (Yang et al., ECCV 2018) and nn-Meter's (Zhang et al., MobiSys 2021) reuse
of one device's measurements across networks built from the same layers, with the whole-model
variants kept as the unit (what the runtime actually ran). The prediction error of the pooled
fit against a fresh one is in ``experiments/results/table_cache.md``.

**The key** of an entry is everything the ratios depend on: the backend's settings
(:meth:`PairedTimer.settings <autoprune.measure.latency.PairedTimer.settings>`: name, runtime
version, provider, threads, options), the batch size, the paired schedule, torch's version
(it exports the ONNX files), the feature list, the machine
(:func:`~autoprune.measure.runtime_table.machine_id`) and :data:`FORMAT`; then the model,
named by the digest of its dense layer-spec multiset. Entries live in
``<folder>/<sha256 of the context, 16 hex>/<model digest, 16 hex>.json``, each holding its whole
key, so a stale or colliding file is detected, not trusted.

**Safety.** This module is the one writer of the folder; files are written atomically
(:func:`autoprune.paths.write_json_atomic`). An unreadable or mismatching entry is ignored with
one warning line. ``latency.table_cache: false`` (``cache_dir=None``) reads and writes nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprune.graph.layers import LayerSpec
from autoprune.graph.policy import Policy, architecture_hash
from autoprune.graph.prunable import PrunableGraph
from autoprune.graph.surgery import apply_policy
from autoprune.measure.latency import PairedTimer
from autoprune.measure.runtime_table import (
    DEFAULT_CACHE_DIR,
    FEATURES,
    FittedLatencyTable,
    calibrated_table,
    calibration_policies,
    machine_id,
    spec_features,
    table_key,
)
from autoprune.measure.schedule import PairedSchedule
from autoprune.paths import write_json_atomic

log = logging.getLogger(__name__)

#: Version of the entry files and of what their ratios mean (bump it when the calibration protocol changes).
FORMAT = 1
#: Least Jaccard overlap of two models' distinct dense layer specs for one to lend its variants to the other.
REUSE_OVERLAP = 0.5
#: Random calibration policies of a model fitted with donors (on top of the dense, uniform and drop ones).
REUSE_RANDOM = 4
#: Most donor models pooled in one fit (the best-overlapping ones).
MAX_DONORS = 3


def spec_keys(specs: Sequence[LayerSpec]) -> list[str]:
    """The sorted layer-spec keys of a model (a multiset: one per layer call), as JSON strings."""
    return sorted(json.dumps(s.key()) for s in specs)


def model_digest(specs: Sequence[LayerSpec]) -> str:
    """The canonical name of a model here: sha256 of its sorted layer-spec multiset (hex)."""
    return hashlib.sha256(json.dumps(spec_keys(specs)).encode()).hexdigest()


def runtime_context(backend_settings: dict[str, Any], *, batch_size: int, schedule: PairedSchedule) -> dict[str, Any]:
    """What a variant's paired ratio depends on besides the variant: backend settings, batch, schedule, versions, machine."""
    return {"format": FORMAT, "backend": dict(backend_settings), "batch_size": int(batch_size), "schedule": dataclasses.asdict(schedule),
            "torch": torch.__version__, "features": list(FEATURES), "machine": machine_id()}


@dataclass(frozen=True)
class ModelVariants:
    """The cached variant timings of one model.

    Attributes:
        model: :func:`model_digest` of its dense layer specs.
        name: Its architecture hash when it was timed (for the record).
        features: Shape ``(n, len(FEATURES))``: each variant's :func:`spec_features`.
        ratios: Shape ``(n,)``: each variant's measured latency ratio to that model's dense latency (dense: 1.0).
        seconds: Wall seconds the ``n`` measurements took.
        overlap: Jaccard overlap of its distinct dense specs with the model asking (set by :meth:`VariantTimingCache.donors`).
    """

    model: str
    name: str
    features: np.ndarray
    ratios: np.ndarray
    seconds: float
    overlap: float = float("nan")


class VariantTimingCache:
    """Whole-model variant timings on disk, per model, shared by every model timed in the same context.

    Args:
        folder: Where entries live (created on the first write).
        context: From :func:`runtime_context`.
    """

    def __init__(self, folder: str | Path, context: dict[str, Any]) -> None:
        self.context = json.loads(json.dumps(context, sort_keys=True, default=str))
        digest = hashlib.sha256(json.dumps(self.context, sort_keys=True).encode()).hexdigest()[:16]
        self.folder = Path(folder) / digest
        self._warned = False

    def path(self, model: str) -> Path:
        """The entry file of the model named ``model`` (:func:`model_digest`)."""
        return self.folder / f"{model[:16]}.json"

    def _read(self, path: Path) -> tuple[dict[str, Any], ModelVariants] | None:
        try:
            data = json.loads(path.read_text())
            if data["key"] != {"context": self.context, "model": data["key"].get("model")} or not path.name.startswith(data["key"]["model"][:16]):
                raise ValueError("its key differs (a stale or colliding entry)")
            rows = data["variants"]
            found = ModelVariants(data["key"]["model"], str(data.get("name", "")), np.array([r["features"] for r in rows], dtype=float),
                                  np.array([r["ratio"] for r in rows], dtype=float), float(sum(r["seconds"] for r in rows)))
            if found.features.shape != (len(rows), len(FEATURES)) or not np.all(found.ratios > 0) or not found.seconds >= 0:
                raise ValueError("malformed variants")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            (log.debug if self._warned else log.warning)("latency variant cache: ignoring the unreadable entry %s (%s)", path, e)
            self._warned = True
            return None
        return data, found

    def donors(self, dense_specs: Sequence[LayerSpec], *, overlap: float = REUSE_OVERLAP, limit: int = MAX_DONORS) -> list[ModelVariants]:
        """Other models' cached variants whose dense specs overlap ``dense_specs`` enough, best overlap first.

        Args:
            dense_specs: The asking model's dense layer specs (at the context's batch).
            overlap: Least Jaccard overlap of the distinct spec keys.
            limit: Most donors returned.

        Returns:
            Up to ``limit`` :class:`ModelVariants` (never the asking model itself), each with its ``overlap``.
        """
        mine, me = set(spec_keys(dense_specs)), model_digest(dense_specs)
        found = []
        for path in sorted(self.folder.glob("*.json")) if self.folder.is_dir() else []:
            read = self._read(path)
            if read is None or read[1].model == me:
                continue
            theirs = set(read[0].get("dense_specs", []))
            j = len(mine & theirs) / max(1, len(mine | theirs))
            if j >= overlap:
                found.append(dataclasses.replace(read[1], overlap=j))
        found.sort(key=lambda d: (-d.overlap, -len(d.ratios), d.model))
        return found[:limit]

    def put(self, model: nn.Module, dense_specs: Sequence[LayerSpec], variants: Sequence[tuple[Sequence[LayerSpec], float, float]]) -> None:
        """Store a model's variant timings (replacing its entry); a folder that cannot be written costs one warning line.

        Args:
            model: The dense model (its architecture hash is recorded).
            dense_specs: Its dense layer specs (its name and its overlap with later models).
            variants: ``(layer specs, measured ratio to dense, wall seconds of the measurement)`` per variant.
        """
        digest = model_digest(dense_specs)
        rows = [{"specs": model_digest(s), "features": spec_features(s).tolist(), "ratio": float(r), "seconds": float(t)} for s, r, t in variants]
        doc = {"key": {"context": self.context, "model": digest}, "name": architecture_hash(model),
               "dense_specs": sorted(set(spec_keys(dense_specs))), "variants": rows}
        path = self.path(digest)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, doc, indent=None)
        except OSError as e:
            log.warning("latency variant cache: cannot write %s (%s); variant timings are kept for this run only", path, e.strerror or e)


def calibrate_on_backend(
    model: nn.Module,
    graph: PrunableGraph,
    timer: PairedTimer,
    *,
    batch_size: int,
    max_ratio: float = 0.8,
    round_to: int | None = None,
    n_random: int = 24,
    seed: int = 0,
    schedule: PairedSchedule = PairedSchedule(rounds=10),
    cache_dir: str | Path | None = DEFAULT_CACHE_DIR,
) -> tuple[FittedLatencyTable, dict[str, Any]]:
    """The latency table of ``model`` on ``timer``'s backend: cached, pooled with overlapping models' variants, or fitted fresh.

    Each calibration policy (:func:`~autoprune.measure.runtime_table.calibration_policies`) is
    applied with the real surgery and timed against the dense model (``timer``'s reference) by
    paired measurement. In order:

    1. the table cached for this model, settings and calibration (no measurement);
    2. else, when other models of at least :data:`REUSE_OVERLAP` spec overlap were calibrated in the
       same context, their variants pooled with ``min(n_random, REUSE_RANDOM)`` random variants of this one;
    3. else ``n_random`` random variants of this one.

    The variants timed are then cached for later models (:class:`VariantTimingCache`).

    Args:
        model: The dense model (``timer``'s reference).
        graph: Its :class:`PrunableGraph`.
        timer: A :class:`PairedTimer` on the backend, batch and threads to predict.
        batch_size: Batch of ``timer``'s example input.
        max_ratio, round_to: The search's pruning limits (ratios are drawn up to ``max_ratio``).
        n_random: Random calibration policies on top of the dense, uniform and drop ones, without donors.
        seed: Seed of the random policies.
        schedule: The paired schedule of each calibration model; part of both keys.
        cache_dir: Folder of cached tables (and ``variants/``; None: always calibrate alone, never write).

    Returns:
        ``(table, info)`` with ``info`` = ``{"from_cache": bool, "reused": variant timings reused,
        "measured": variants timed now, "seconds_saved": s, "donors": [{"model", "variants", "overlap", "scale"}]}``.
        ``seconds_saved`` is the stored calibration time of a cached table, or for a pooled fit the
        variants not timed (the fresh fit's count minus this one's) times this fit's mean seconds per variant.

    Raises:
        ConfigError: a bad count.
    """
    key = table_key(
        architecture_hash(model), timer.settings(), batch_size,
        round_to=round_to, max_ratio=max_ratio, n_random=n_random, seed=seed, features=list(FEATURES),
        schedule=dataclasses.asdict(schedule),
    )
    dense_specs = graph.specs_for({}, (), batch_size=batch_size)
    store = None if cache_dir is None else VariantTimingCache(Path(cache_dir) / "variants", runtime_context(timer.settings(), batch_size=batch_size, schedule=schedule))
    donors = [] if store is None else store.donors(dense_specs)
    full = calibration_policies(graph.unit_names, graph.block_names, max_ratio=max_ratio, n_random=n_random, seed=seed)
    policies = calibration_policies(graph.unit_names, graph.block_names, max_ratio=max_ratio, n_random=min(n_random, REUSE_RANDOM), seed=seed) if donors else full

    def measure(policy: Policy) -> Callable[[], float]:
        return lambda: timer.ratio(apply_policy(model, policy, graph=graph, round_to=round_to).eval(), schedule).ratio

    def is_dense(p: Policy) -> bool:
        return not p.ratios and not p.drop

    variants = [(graph.specs_for(p.ratios, p.drop, round_to=round_to, batch_size=batch_size), 1.0 if is_dense(p) else measure(p)) for p in policies]
    described = [{"model": d.model[:16], "name": d.name, "variants": len(d.ratios), "overlap": round(d.overlap, 4)} for d in donors]
    table, cached = calibrated_table(key, variants, dense_ms=lambda: timer.reference_ms(), cache_dir=cache_dir,
                                     donors=[(d.features, d.ratios) for d in donors], donor_info=described)
    if cached:
        saved = table.seconds if math.isfinite(table.seconds) else 0.0
        return table, {"from_cache": True, "reused": len(table) + sum(d["variants"] for d in table.donors), "measured": 0,
                       "seconds_saved": saved, "donors": table.donors}
    timed = [s["seconds"] for p, s in zip(policies, table.samples) if not is_dense(p)]
    if store is not None:
        store.put(model, dense_specs, [(specs, s["ratio"], s["seconds"]) for (specs, _), s in zip(variants, table.samples)])
    skipped = sum(not is_dense(p) for p in full) - len(timed)
    saved = skipped * float(np.mean(timed)) if donors and timed else 0.0
    return table, {"from_cache": False, "reused": int(sum(len(d.ratios) for d in donors)), "measured": len(timed),
                   "seconds_saved": saved, "donors": table.donors}


__all__ = ["FORMAT", "MAX_DONORS", "REUSE_OVERLAP", "REUSE_RANDOM", "ModelVariants", "VariantTimingCache", "calibrate_on_backend",
           "model_digest", "runtime_context", "spec_keys"]
