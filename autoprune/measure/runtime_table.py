"""A latency lookup table per backend, fitted to whole-model measurements *on that backend*.

A serving runtime fuses conv+BN+activation, picks kernels by shape and drops per-module
dispatch, so per-layer eager micro-benchmarks (:mod:`autoprune.measure.table`) rescaled
by a line do not predict it. Here the backend itself is the benchmark: a few dozen
calibration variants of the model (uniform and random channel ratios, random block
drops) are pruned with the real surgery and timed against the dense model by paired
measurement; a non-negative least-squares fit (``scipy.optimize.nnls``) on layer-shape
features then gives a per-feature cost:

``latency / dense latency ≈ w · features(layer specs)``

with features: a constant, conv and other layer calls, conv MACs, conv MACs with channels
rounded up to the 8-wide SIMD blocks the CPU kernels use, conv input and output elements,
other layers' elements, linear MACs, and the calls and elements of convs whose input or
output channels are not a multiple of 8 (all per batch). The last four matter on ONNX
Runtime, whose blocked NCHWc layout pads and reorders such tensors: there, random
policies with odd channel counts measured up to 1.2x the dense latency, and leaving these
features out tripled the leave-one-out error (23% -> 8% median with them). The fit minimises *relative* error
(rows weighted by 1 / measured ratio). This follows the "predict latency from a
regression on architecture features measured on the target device" approach of
nn-Meter (Zhang et al., MobiSys 2021) and HELP, reduced to one model family's variants.

Tables are cached on disk per (architecture, backend settings, batch, machine), so a
second search of the same model on the same backend skips calibration. The timed variants
themselves are cached too (:mod:`autoprune.measure.variant_cache`, which calibrates): a model
made of the same layer specs as one calibrated before (ResNet-32 after ResNet-20) is fitted
on that model's variants pooled with a few of its own (:meth:`FittedLatencyTable.fit`'s
``donors``: each donor model gets a fitted dense-latency scale), so it times 9 variants, not 29.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import nnls

from autoprune.errors import ConfigError
from autoprune.graph.layers import ATTENTION_CORE, LayerSpec, spec_macs
from autoprune.graph.policy import Policy
from autoprune.paths import write_json_atomic

log = logging.getLogger(__name__)

_FORMAT = 1
FEATURES = (
    "constant", "conv_calls", "other_calls", "conv_macs", "conv_macs_simd8", "conv_in_elems", "conv_out_elems", "other_elems",
    "linear_macs", "conv_in_unaligned_calls", "conv_in_unaligned_elems", "conv_out_unaligned_calls", "conv_out_unaligned_elems",
    "attention_macs",
)
DEFAULT_CACHE_DIR = Path(".autoprune") / "latency-tables"


def _ceil8(n: int) -> int:
    return int(math.ceil(n / 8) * 8)


def spec_features(specs: Sequence[LayerSpec]) -> np.ndarray:
    """The feature vector (:data:`FEATURES`, shape ``(len(FEATURES),)``) of a model's layer specs.

    MACs and elements count the whole batch (``input_shape[0]``).
    """
    f = np.zeros(len(FEATURES))
    f[0] = 1.0
    for s in specs:
        batch = s.input_shape[0] if s.input_shape else 1
        if s.kind == "conv2d" and len(s.input_shape) == 4:
            h, w = s.input_shape[-2:]
            (kh, kw), (sh, sw), (ph, pw) = s.kernel_size, s.stride, s.padding
            oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
            per_group_in = max(1, s.in_channels // max(1, s.groups))
            positions = batch * oh * ow * kh * kw
            f[1] += 1
            f[3] += positions * s.out_channels * per_group_in
            f[4] += positions * _ceil8(s.out_channels) * (_ceil8(per_group_in) if per_group_in > 1 else 1)
            f[5] += batch * s.in_channels * h * w
            f[6] += batch * s.out_channels * oh * ow
            if s.in_channels % 8:  # runtimes' blocked layouts (ONNX Runtime NCHWc) pad and reorder these
                f[9] += 1
                f[10] += batch * s.in_channels * h * w
            if s.out_channels % 8:
                f[11] += 1
                f[12] += batch * s.out_channels * oh * ow
        elif s.kind == "linear":
            f[2] += 1
            f[8] += batch * s.in_channels * s.out_channels
        elif s.kind == ATTENTION_CORE:  # Q·Kᵀ and attn·V of every head: grows with the sequence length squared
            f[2] += 1
            f[13] += batch * spec_macs(s)
        else:
            f[2] += 1
            f[7] += float(np.prod(s.input_shape[1:])) * batch if len(s.input_shape) > 1 else batch
    return f


def machine_id() -> dict[str, Any]:
    """What identifies this machine's speed for a cached table: CPU model, cores, OS and Python build."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "system": platform.system(), "machine": platform.machine()}


def _pooled_nnls(x: np.ndarray, y: np.ndarray, donors: list[tuple[np.ndarray, np.ndarray]],
                 scales: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """``(w, s)`` minimising ``Σ (x·w / y - 1)² + Σ_d Σ ((X_d·w / y_d - s_d) / s_d⁰)²`` with ``w, s >= 0``.

    ``s_d⁰``: the donors' scales of a previous pass (None: 1), so each row's residual is relative.
    """
    n_donors = len(donors)
    rows = [np.hstack([x / y[:, None], np.zeros((len(y), n_donors))])]
    rhs = [np.ones(len(y))]
    for j, (fx, fy) in enumerate(donors):
        block = np.zeros((len(fy), n_donors))
        block[:, j] = -1.0
        weight = 1.0 if scales is None or not scales[j] > 0 else 1.0 / scales[j]
        rows.append(np.hstack([fx / fy[:, None], block]) * weight)
        rhs.append(np.zeros(len(fy)))
    solution, _ = nnls(np.vstack(rows), np.concatenate(rhs))
    return solution[: x.shape[1]], solution[x.shape[1]:]


class FittedLatencyTable:
    """Latency relative to the dense model, predicted from layer-shape features fitted on one backend.

    Args:
        weights: Cost per feature (:data:`FEATURES`), in dense-latency units.
        dense_ms: The dense model's latency on the backend when calibrated (for :meth:`predict_ms`).
        key: What the table was calibrated for (architecture, backend settings, batch, machine).
        samples: Calibration points of this model kept for reporting (``[{"ratio", "predicted", "seconds"}]``,
            seconds: the wall time of that variant's measurement).
        seconds: Wall seconds its calibration took (what a reuse from the cache saves; NaN: not recorded).
        donors: The other models whose cached variants the fit pooled (``[{"model", "variants", "overlap", "scale"}]``,
            :mod:`autoprune.measure.variant_cache`); empty for a fit on this model's variants alone.

    Raises:
        ConfigError: a weight for an unknown feature.
    """

    def __init__(self, weights: dict[str, float] | None = None, *, dense_ms: float = float("nan"), key: dict | None = None,
                 samples: list | None = None, seconds: float = float("nan"), donors: list | None = None) -> None:
        unknown = set(weights or {}) - set(FEATURES)
        if unknown:
            raise ConfigError(f"latency table weights: unknown feature {sorted(unknown)[0]!r}; allowed: {', '.join(FEATURES)}")
        self.weights = {name: float((weights or {}).get(name, 0.0)) for name in FEATURES}
        self.dense_ms = float(dense_ms)
        self.key = dict(key or {})
        self.samples = list(samples or [])
        self.seconds = float(seconds)
        self.donors = list(donors or [])
        self.donor_scales: list[float] = []

    def __len__(self) -> int:
        return len(self.samples)

    def _w(self) -> np.ndarray:
        return np.array([self.weights[n] for n in FEATURES])

    def fit(self, samples: Sequence[tuple[Sequence[LayerSpec], float]],
            donors: Sequence[tuple[np.ndarray, np.ndarray]] = ()) -> dict[str, float]:
        """Fit the weights by non-negative least squares on relative error, optionally pooled with other models' variants.

        Args:
            samples: ``(layer specs of a model, its measured latency ratio to dense)``; include
                the dense model at 1.0.
            donors: Variants of *other* models timed in the same context
                (:mod:`autoprune.measure.variant_cache`), one ``(features, ratios)`` pair per model:
                features of shape ``(n, len(FEATURES))`` (:func:`spec_features`) and ratios of shape
                ``(n,)`` to that model's own dense latency. Each donor model gets a free scale
                ``s`` (its dense latency in this model's dense units, fitted too), so its rows
                ask ``w · f ≈ s · ratio``: they shape the per-feature costs, the samples fix the
                unit. Rows are weighted by 1 / (s · ratio) (the scales from a first unweighted pass).

        Returns:
            The fitted ``{feature: weight}``, also stored (:attr:`donor_scales`: the donors' fitted ``s``).

        Raises:
            ConfigError: fewer than 3 samples, a non-positive ratio, or a donor of the wrong shape.
        """
        if len(samples) < 3:
            raise ConfigError(f"samples: expected at least 3 (specs, measured ratio) pairs to fit a latency table, got {len(samples)}")
        for i, (_, r) in enumerate(samples):
            if not r > 0:
                raise ConfigError(f"samples[{i}]: measured ratio must be > 0, got {r!r}")
        x = np.stack([spec_features(specs) for specs, _ in samples])
        y = np.array([float(r) for _, r in samples])
        pooled = [(np.asarray(fx, dtype=float).reshape(-1, len(FEATURES)), np.asarray(fy, dtype=float).reshape(-1)) for fx, fy in donors]
        for i, (fx, fy) in enumerate(pooled):
            if len(fx) != len(fy) or not np.all(fy > 0):
                raise ConfigError(f"donors[{i}]: expected one positive ratio per feature row, got {len(fy)} ratios for {len(fx)} rows")
        every = np.vstack([x, *(fx for fx, _ in pooled)])
        scale = np.where(every.max(0) > 0, every.max(0), 1.0)
        w_scaled, scales = _pooled_nnls(x / scale, y, [(fx / scale, fy) for fx, fy in pooled], None)
        if pooled:  # weight donor rows by their relative error now that their scales are known
            w_scaled, scales = _pooled_nnls(x / scale, y, [(fx / scale, fy) for fx, fy in pooled], scales)
        w = w_scaled / scale
        self.weights = {name: float(v) for name, v in zip(FEATURES, w)}
        self.samples = [{"ratio": float(r), "predicted": float(p)} for r, p in zip(y, x @ w)]
        self.donor_scales = [float(v) for v in scales]
        return dict(self.weights)

    def predict(self, specs: Sequence[LayerSpec]) -> float:
        """Predicted latency in units of the calibrating dense model's latency."""
        return float(spec_features(specs) @ self._w())

    def predict_ratio(self, specs: Sequence[LayerSpec], reference_specs: Sequence[LayerSpec]) -> float:
        """Predicted latency of ``specs`` divided by that of ``reference_specs``."""
        return self.predict(specs) / self.predict(reference_specs)

    def predict_ms(self, specs: Sequence[LayerSpec]) -> float:
        """Predicted latency in milliseconds (ratio times the dense latency measured at calibration)."""
        return self.predict(specs) * self.dense_ms

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what :meth:`save` writes)."""
        return {"format": _FORMAT, "kind": "fitted", "weights": self.weights, "dense_ms": self.dense_ms, "key": self.key, "samples": self.samples,
                "seconds": self.seconds, "donors": self.donors}

    def save(self, path: str | Path) -> Path:
        """Write the table as JSON, atomically."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> FittedLatencyTable:
        """Read a table written by :meth:`save`.

        Raises:
            ConfigError: the file is missing, not JSON or not a fitted latency table.
        """
        try:
            data = json.loads(Path(path).read_text())
            if data.get("format") != _FORMAT or data.get("kind") != "fitted":
                raise ValueError(f"format {data.get('format')!r}/{data.get('kind')!r}, expected {_FORMAT}/fitted")
            return cls(data["weights"], dense_ms=data["dense_ms"], key=data["key"], samples=data.get("samples"),
                       seconds=float(data.get("seconds", float("nan"))), donors=data.get("donors"))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ConfigError(f"latency table path: cannot read {str(path)!r} as a fitted latency table ({e})") from e


def table_key(arch_hash: str, backend_settings: dict[str, Any], batch_size: int, **extra: Any) -> dict[str, Any]:
    """The cache key of a table: architecture, backend settings, batch size, machine (and ``extra``)."""
    return {"arch_hash": arch_hash, "backend": backend_settings, "batch_size": int(batch_size), "machine": machine_id(), "format": _FORMAT, **extra}


def cache_path(key: dict[str, Any], cache_dir: str | Path = DEFAULT_CACHE_DIR) -> Path:
    """Where the table for ``key`` is cached: ``<cache_dir>/<backend>-<sha256 of the key>.json``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{key.get('backend', {}).get('backend', 'backend')}-{digest}.json"


def calibrated_table(
    key: dict[str, Any],
    variants: Sequence[tuple[Sequence[LayerSpec], Callable[[], float] | float]],
    *,
    dense_ms: float | Callable[[], float],
    cache_dir: str | Path | None = DEFAULT_CACHE_DIR,
    donors: Sequence[tuple[np.ndarray, np.ndarray]] = (),
    donor_info: Sequence[dict[str, Any]] = (),
) -> tuple[FittedLatencyTable, bool]:
    """The cached table for ``key``, or one fitted on ``variants`` now (and cached).

    This function is the one writer of the table files.

    Args:
        key: From :func:`table_key`.
        variants: ``(layer specs, measured ratio or a callable measuring it)`` per calibration
            model; callables run only when the cache misses (each one's wall seconds is kept in
            :attr:`FittedLatencyTable.samples`).
        dense_ms: The dense model's latency on the backend (or a callable measuring it, run only on a
            cache miss), stored for :meth:`FittedLatencyTable.predict_ms`.
        cache_dir: Folder of cached tables (None: no cache).
        donors: Other models' variants to pool in the fit (:meth:`FittedLatencyTable.fit`).
        donor_info: One description per donor (``{"model", "variants", "overlap"}``), recorded with its fitted scale.

    Returns:
        ``(table, from_cache)``.

    Raises:
        ConfigError: fewer than 3 variants.
    """
    path = cache_path(key, cache_dir) if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            table = FittedLatencyTable.load(path)
            if table.key == json.loads(json.dumps(key, default=str)):
                log.info("latency table: reusing %s", path)
                return table, True
        except ConfigError as e:
            log.warning("latency table: ignoring unreadable cache %s (%s)", path, e)
    t0 = time.perf_counter()
    samples, spent = [], []
    for specs, m in variants:
        t = time.perf_counter()
        samples.append((specs, float(m() if callable(m) else m)))
        spent.append(time.perf_counter() - t if callable(m) else 0.0)
    table = FittedLatencyTable(dense_ms=dense_ms() if callable(dense_ms) else dense_ms, key=json.loads(json.dumps(key, default=str)))
    table.fit(samples, donors)
    for sample, s in zip(table.samples, spent):
        sample["seconds"] = s
    table.donors = [{**dict(info), "scale": scale} for info, scale in zip(donor_info, table.donor_scales)]
    table.seconds = time.perf_counter() - t0
    log.info("latency table: calibrated on %d variants%s in %.1fs", len(samples),
             f" and {sum(len(fy) for _, fy in donors)} cached ones of {len(donors)} other model(s)" if donors else "", table.seconds)
    if path is not None:
        table.save(path)
    return table, False


def calibration_policies(unit_names: Sequence[str], block_names: Sequence[str], *, max_ratio: float = 0.8, n_random: int = 16, seed: int = 0) -> list[Policy]:
    """Dense, uniform ratios (with and without drops) and ``n_random`` random policies with random block drops.

    Random variants (odd channel counts, random drops) look like what searchers propose, so the
    fit is not biased towards round uniform models.
    """
    rng = np.random.default_rng(seed)
    policies = [Policy()]
    for r in (0.25, 0.5, 0.75):
        policies.append(Policy.uniform(unit_names, min(r, max_ratio)))
    if block_names:
        policies.append(Policy.uniform(unit_names, min(0.25, max_ratio), drop=block_names[::2]))
        policies.append(Policy.uniform(unit_names, 0.0, drop=block_names[1::2]))
    for _ in range(n_random):
        ratios = {u: float(rng.uniform(0.0, max_ratio)) for u in unit_names}
        drop = tuple(b for b in block_names if rng.random() < 0.25)
        policies.append(Policy(ratios, drop))
    return policies


__all__ = ["calibration_policies", "DEFAULT_CACHE_DIR", "FEATURES", "FittedLatencyTable", "cache_path", "calibrated_table", "machine_id", "spec_features", "table_key"]
