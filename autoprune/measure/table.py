"""A latency lookup table: predicts a model's latency from its layer specs without running it.

Specs come from :func:`autoprune.graph.layers.record_layer_specs`, the recorder the prunable
graph uses too, so the graph's predicted specs and a recorded model's specs share keys.
Each distinct :meth:`LayerSpec.key` is micro-benchmarked once, on demand, by building
a fresh module of that kind and timing it on a random input of the recorded shape
(fastest of a few calls). A parameter-free layer of no known kind is rebuilt from its recorded
attributes (``nn.Upsample(scale_factor=2)``, a ``DropPath``); a layer that cannot be rebuilt (a
custom layer with weights, a scripted submodule) is timed in place, on the recorded instance,
when the spec still has its recorded shapes; only what neither can run counts 0 ms, with one
warning line naming it.
The sum over a model's specs misses functional ops (``F.relu``, residual additions)
and per-call Python overhead, so the table is calibrated against whole-model
measurements: ``latency ≈ a + b * sum(spec latencies)``. The search mostly uses
:meth:`LatencyTable.predict_ratio`, the predicted ratio to the dense model.
With a :class:`~autoprune.measure.layer_cache.LayerTimingCache`, a model pays only for specs no
earlier model had (same settings, versions, machine); new ones are rescaled to reused anchors.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from autoprune.errors import ConfigError
from autoprune.graph.layers import ATTENTION_CORE, FUNCTIONAL_KINDS, ExampleInput, LayerSpec, record_layer_specs
from autoprune.graph.transformer import AttentionCore
from autoprune.measure.backends import DEFAULT_THREADS, LatencyBackend
from autoprune.measure.latency import PairedTimer, fixed_threads
from autoprune.measure.layer_cache import LayerTimingCache
from autoprune.measure.schedule import PairedSchedule

logger = logging.getLogger(__name__)

_FORMAT = 2  # 2: keys of the one recorder (graph.layers.record_layer_specs), with output shapes
_NO_ARG_MODULES: dict[str, type[nn.Module]] = {
    name.lower(): cls for name, cls in vars(nn).items() if isinstance(cls, type) and issubclass(cls, nn.Module)
}


class _Product(nn.Module):
    """A functional product alone (``matmul``, ``einsum``, SDPA), timed on random operands of its recorded shapes."""

    def __init__(self, kind: str, equation: str) -> None:
        super().__init__()
        self.kind, self.equation = kind, equation

    def forward(self, *operands: torch.Tensor) -> torch.Tensor:
        if self.kind == "einsum":
            return torch.einsum(self.equation, *operands)
        if self.kind == "scaled_dot_product_attention":
            return nn.functional.scaled_dot_product_attention(*operands)
        return torch.matmul(*operands)


def _class_of(spec: LayerSpec) -> type[nn.Module] | None:
    """The module class of a spec: ``torch.nn``'s by kind, or the ``class`` option of one outside it."""
    ref = dict(spec.options).get("class")
    if isinstance(ref, str) and ":" in ref:
        module, _, qualname = ref.partition(":")
        try:
            obj: object = importlib.import_module(module)
            for part in qualname.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError):
            return None
        return obj if isinstance(obj, type) and issubclass(obj, nn.Module) else None
    return _NO_ARG_MODULES.get(spec.kind)


def _with_options(cls: type[nn.Module], options: tuple[tuple[str, object], ...]) -> nn.Module:
    """A parameter-free module of ``cls`` rebuilt from its recorded attributes (its constructor is not called)."""
    module = cls.__new__(cls)
    nn.Module.__init__(module)
    for key, value in options:
        if key != "class":
            object.__setattr__(module, key, value)
    return module


def _build(spec: LayerSpec) -> nn.Module | None:
    """A fresh module with the spec's parameters, or None if the kind cannot be rebuilt.

    Convolutions (any dimensionality, transposed), linear layers, attention cores, norms
    (batch, instance, group, layer), PReLU, embeddings, pools and functional products have
    builders; any other parameter-free module is rebuilt from its recorded attributes
    (:attr:`LayerSpec.options`: ``nn.Upsample(scale_factor=2)``, a ``DropPath``).
    """
    kind = spec.kind
    cls = _NO_ARG_MODULES.get(kind)
    if kind.startswith(("conv", "convtranspose")) and cls is not None:
        return cls(
            spec.in_channels, spec.out_channels, spec.kernel_size, spec.stride, spec.padding,
            dilation=spec.dilation or 1, groups=spec.groups, bias=spec.bias,
        )  # fmt: skip
    if kind == "linear":
        return nn.Linear(spec.in_channels, spec.out_channels, bias=spec.bias)
    if kind == ATTENTION_CORE:  # a Hugging Face self-attention's Q·Kᵀ and attn·V
        return AttentionCore(spec.groups)
    if kind in FUNCTIONAL_KINDS:
        return _Product(kind, str(dict(spec.options).get("equation", "")))
    if kind == "embedding":
        return nn.Embedding(spec.in_channels, spec.out_channels)
    if (kind.startswith(("batchnorm", "instancenorm"))) and cls is not None:
        return cls(spec.in_channels, affine=spec.bias)
    if kind == "groupnorm":
        return nn.GroupNorm(spec.groups, spec.in_channels, affine=spec.bias)
    if kind == "prelu":
        return nn.PReLU(spec.groups if spec.groups > 1 else 1)
    if kind == "layernorm":
        return nn.LayerNorm(spec.in_channels, elementwise_affine=spec.bias)
    if kind.startswith(("maxpool", "avgpool")) and cls is not None:
        return cls(spec.kernel_size, spec.stride, spec.padding)
    if kind.startswith(("adaptiveavgpool", "adaptivemaxpool")) and cls is not None:
        return cls(spec.kernel_size)
    cls = _class_of(spec)
    if cls is not None and spec.options:
        return _with_options(cls, spec.options)
    if cls is not None:
        try:
            return cls()
        except TypeError:
            return None
    return None


def _inputs(spec: LayerSpec) -> tuple[torch.Tensor, ...]:
    """Random inputs of a spec's recorded shapes: token ids for an embedding, every operand of a product."""
    if spec.kind == "embedding":
        return (torch.randint(0, max(1, spec.in_channels), spec.input_shape),)
    if spec.kind in FUNCTIONAL_KINDS:
        return tuple(torch.randn(shape) for shape in dict(spec.options).get("operands", (spec.input_shape,)))
    return (torch.randn(spec.input_shape),)


def _in_place(spec: LayerSpec) -> nn.Module | None:
    """The recorded instance itself, when the spec still has its recorded shapes (a layer no builder knows, e.g. a custom norm)."""
    module = spec.module
    if not isinstance(module, nn.Module):
        return None
    return module


class LatencyTable:
    """Per-spec latencies (measured on demand and cached) plus a linear calibration.

    New specs are benchmarked in ``passes`` sweeps spread over time, ``repeats``
    timed calls each, and the fastest call is kept: other processes only ever add
    time, and a busy phase of the machine rarely lasts through every sweep.

    Args:
        threads: Intra-op threads for every micro-benchmark.
        warmup: Untimed calls of each new spec before the first sweep.
        repeats: Timed calls of each spec per sweep.
        passes: Sweeps over the new specs.
        entries: Initial ``{key: milliseconds}`` (as written by :meth:`save`).
        offset_ms: Calibration intercept ``a``.
        scale: Calibration slope ``b``.
        cache: Per-spec timings shared across models on disk (None: time every new spec here).

    Raises:
        ConfigError: non-positive counts.
    """

    def __init__(
        self,
        *,
        threads: int = DEFAULT_THREADS,
        warmup: int = 2,
        repeats: int = 3,
        passes: int = 3,
        entries: dict[str, float] | None = None,
        offset_ms: float = 0.0,
        scale: float = 1.0,
        cache: LayerTimingCache | None = None,
    ) -> None:
        for field, value, minimum in (("threads", threads, 1), ("warmup", warmup, 0), ("repeats", repeats, 1), ("passes", passes, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"{field}: expected an integer >= {minimum}, got {value!r}")
        self.threads = threads
        self.warmup = warmup
        self.repeats = repeats
        self.passes = passes
        self.entries: dict[str, float] = dict(entries or {})
        self._anchors: list[LayerSpec] = []  # specs re-timed with every later batch (see prefill)
        self.offset_ms = float(offset_ms)
        self.scale = float(scale)
        self._unknown_kinds: set[str] = set()
        self._in_place_kinds: set[str] = set()
        self.cache = cache

    def __len__(self) -> int:
        return len(self.entries)

    @staticmethod
    def key_of(spec: LayerSpec) -> str:
        """The JSON string under which ``spec`` is stored."""
        return json.dumps(spec.key())

    def _bench(self, specs: list[LayerSpec]) -> tuple[list[float], list[float]]:
        """``(fastest call of each spec in ms over passes sweeps, wall seconds spent on each)``; 0 ms for kinds without a builder.

        Runs under a forked RNG so micro-benchmarks never change torch's global random state
        (searchers' reproducibility must not depend on which shapes were new).
        """
        with torch.random.fork_rng(devices=[]):
            return self._bench_unseeded(specs)

    def _bench_unseeded(self, specs: list[LayerSpec]) -> tuple[list[float], list[float]]:
        cases: list[tuple[nn.Module, tuple[torch.Tensor, ...]] | None] = []
        spent = []
        for spec in specs:
            start, case = time.perf_counter(), None
            for how, make in (("rebuilt", _build), ("timed in place", _in_place)):
                try:
                    module = make(spec)
                    if module is None:
                        continue
                    case = (module.eval(), _inputs(spec))
                    with torch.inference_mode():
                        case[0](*case[1])  # a spec no module can run is counted as 0 ms, never fatal
                    if how != "rebuilt" and spec.kind not in self._in_place_kinds:
                        self._in_place_kinds.add(spec.kind)
                        logger.info("latency table: layer kind %r has no builder; %s (%s)", spec.kind, how, spec.module_name)
                    break
                except Exception as e:  # noqa: BLE001 - one odd layer must not end calibration
                    logger.debug("latency table: layer %s not %s (%s: %s)", spec.module_name, how, type(e).__name__, e)
                    case = None
            if case is None and spec.kind not in self._unknown_kinds:
                self._unknown_kinds.add(spec.kind)
                logger.warning(
                    "latency table: layer %s (%s) can be neither rebuilt nor timed in place at shape %s; counted as 0 ms "
                    "(calibration absorbs it)", spec.module_name, spec.kind, spec.input_shape,
                )  # fmt: skip
            cases.append(case)
            spent.append(time.perf_counter() - start)
        best = [math.inf if case else 0.0 for case in cases]
        with fixed_threads(self.threads), torch.inference_mode():
            for i, case in enumerate(cases):
                start = time.perf_counter()
                for _ in range(self.warmup if case else 0):
                    case[0](*case[1])
                spent[i] += time.perf_counter() - start
            for _ in range(self.passes):
                for i, case in enumerate(cases):
                    if case is None:
                        continue
                    module, x = case
                    for _ in range(self.repeats):
                        start = time.perf_counter_ns()
                        module(*x)
                        took = time.perf_counter_ns() - start
                        best[i], spent[i] = min(best[i], took / 1e6), spent[i] + took / 1e9
        return best, spent

    def spec_ms(self, spec: LayerSpec) -> float:
        """Raw (uncalibrated) latency of one spec in milliseconds, benchmarked on first use."""
        self.prefill([[spec]])
        return self.entries[self.key_of(spec)]

    def prefill(self, spec_lists: Iterable[Sequence[LayerSpec]], *, chunk: int = 64) -> int:
        """Benchmark every spec neither in the table nor in :attr:`cache`, ``chunk`` at a time; returns how many were new here."""
        missing: dict[str, LayerSpec] = {}
        for specs in spec_lists:
            for spec in specs:
                key = self.key_of(spec)
                if key not in self.entries:
                    missing.setdefault(key, spec)
        if self.cache is not None:
            hits = []
            for key in list(missing):
                hit = self.cache.get(key)
                if hit is not None:
                    self.entries[key], spec = hit.ms, missing.pop(key)
                    hits += [spec] if hit.ms > 0 else []
            if not self._anchors:  # new specs are then rescaled to the cache's scale
                self._anchors = hits[:: max(1, len(hits) // 6)][:6]
        keys = list(missing)
        for i in range(0, len(keys), chunk):
            part = keys[i : i + chunk]
            specs = [missing[k] for k in part]
            if not self._anchors:
                # The first batch defines the machine's "normal" speed; a few of its specs become anchors.
                times, spent = self._bench(specs)
                self.entries.update(zip(part, times))
                self._store(part, times, spent)
                self._anchors = [sp for sp, t in zip(specs, times) if t > 0][:: max(1, len(specs) // 6)][:6]
                continue
            # Later batches are timed together with the anchors and rescaled by how much slower the
            # anchors ran this time: the paired-measurement idea, so a noisy moment on a shared
            # machine does not inflate the entries benchmarked in it.
            times, spent = self._bench(specs + self._anchors)
            now, ref = times[len(specs):], [self.entries[self.key_of(a)] for a in self._anchors]
            factors = sorted(r / n for r, n in zip(ref, now) if n > 0)
            factor = factors[len(factors) // 2] if factors else 1.0
            scaled = [t * factor for t in times[: len(specs)]]
            self.entries.update(zip(part, scaled))
            self._store(part, scaled, spent)
        if missing:
            logger.debug("latency table: benchmarked %d new specs (%d total)", len(missing), len(self.entries))
        return len(missing)

    def _store(self, keys: Sequence[str], times: Sequence[float], spent: Sequence[float]) -> None:
        """Write fresh timings to :attr:`cache` (with the seconds each took), if there is one."""
        if self.cache is not None:
            for key, ms, seconds in zip(keys, times, spent):
                self.cache.put(key, ms, seconds)

    def raw_ms(self, specs: Sequence[LayerSpec]) -> float:
        """Sum of the per-spec latencies in milliseconds, uncalibrated."""
        self.prefill([specs])
        return float(sum(self.entries[self.key_of(s)] for s in specs))

    def fit(self, samples: Sequence[tuple[Sequence[LayerSpec], float]]) -> tuple[float, float]:
        """Fit ``measured_ms ≈ offset_ms + scale * raw_ms(specs)`` by least squares.

        With one sample (or when the intercept would come out negative) only the scale
        is fitted.

        Args:
            samples: ``(specs of a model, measured latency of that model in ms)`` pairs.

        Returns:
            ``(offset_ms, scale)``, also stored on the table.

        Raises:
            ConfigError: no samples or a non-positive latency.
        """
        if not samples:
            raise ConfigError("samples: expected at least one (specs, measured_ms) pair, got none")
        for i, (_, ms) in enumerate(samples):
            if not ms > 0:
                raise ConfigError(f"samples[{i}]: measured latency must be > 0 ms, got {ms!r}")
        self.prefill([specs for specs, _ in samples])
        x = np.array([self.raw_ms(specs) for specs, _ in samples])
        y = np.array([float(ms) for _, ms in samples])
        offset, scale = 0.0, float(y @ x / (x @ x)) if x @ x > 0 else 1.0
        if len(samples) > 1 and np.ptp(x) > 0:
            (fit_offset, fit_scale), *_ = np.linalg.lstsq(np.stack([np.ones_like(x), x], 1), y, rcond=None)
            if fit_offset >= 0 and fit_scale > 0:
                offset, scale = float(fit_offset), float(fit_scale)
            else:
                logger.info("latency table: affine fit gave offset %.3f ms, scale %.3f; using scale only", fit_offset, fit_scale)
        self.offset_ms, self.scale = offset, scale
        logger.debug("latency table calibrated: %.3f ms + %.3f * sum", offset, scale)
        return offset, scale

    def predict_ms(self, specs: Sequence[LayerSpec]) -> float:
        """Calibrated latency prediction in milliseconds for a model with these specs (at their batch size)."""
        return self.offset_ms + self.scale * self.raw_ms(specs)

    def predict_ratio(self, specs: Sequence[LayerSpec], reference_specs: Sequence[LayerSpec]) -> float:
        """Predicted latency of ``specs`` divided by that of ``reference_specs``."""
        return self.predict_ms(specs) / self.predict_ms(reference_specs)

    def save(self, path: str | Path) -> None:
        """Write the table and its calibration as JSON.

        Raises:
            OSError: the file cannot be written.
        """
        data = {
            "format": _FORMAT,
            "threads": self.threads,
            "warmup": self.warmup,
            "repeats": self.repeats,
            "passes": self.passes,
            "offset_ms": self.offset_ms,
            "scale": self.scale,
            "entries": self.entries,
        }
        Path(path).write_text(json.dumps(data, indent=1, sort_keys=True))

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        """Read a table written by :meth:`save`.

        Raises:
            ConfigError: the file is missing, not JSON or not a latency table.
        """
        try:
            data = json.loads(Path(path).read_text())
            if data.get("format") != _FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {_FORMAT}")
            return cls(
                threads=int(data["threads"]),
                warmup=int(data["warmup"]),
                repeats=int(data["repeats"]),
                passes=int(data["passes"]),
                entries={str(k): float(v) for k, v in data["entries"].items()},
                offset_ms=float(data["offset_ms"]),
                scale=float(data["scale"]),
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ConfigError(f"latency table path: cannot read {str(path)!r} as a latency table ({e})") from e

    @classmethod
    def calibrated_for(
        cls,
        models: Sequence[nn.Module],
        example_input: ExampleInput,
        *,
        threads: int = DEFAULT_THREADS,
        backend: str | LatencyBackend = "torch",
        warmup: int = 2,
        repeats: int = 3,
        passes: int = 3,
        rounds: int = 15,
    ) -> LatencyTable:
        """A table calibrated on ``models`` at ``example_input``'s batch size.

        The first model is the reference: the others are timed against it by paired
        measurement (:class:`~autoprune.measure.latency.PairedTimer`), so the fit sees
        consistent relative latencies even on a busy machine. With one model only the
        scale is fitted; add one or two pruned variants to fit the fixed overhead too.

        Args:
            models: The dense model first, then optionally pruned variants of it.
            example_input: Input batch used for specs and measurements.
            threads: Threads for micro-benchmarks and model measurements.
            backend: Backend for the whole-model measurements.
            warmup, repeats, passes: Micro-benchmark counts (see :class:`LatencyTable`).
            rounds: Rounds of each paired measurement.

        Raises:
            ConfigError: empty ``models`` or bad counts.
        """
        if not models:
            raise ConfigError("models: expected at least one model to calibrate the latency table, got none")
        table = cls(threads=threads, warmup=warmup, repeats=repeats, passes=passes)
        timer = PairedTimer(models[0], example_input, backend=backend, threads=threads)
        ratios = [1.0] + [timer.ratio(model, PairedSchedule(rounds=rounds)).ratio for model in models[1:]]
        reference_ms = timer.reference_ms()
        specs = [record_layer_specs(model, example_input) for model in models]
        table.fit([(s, r * reference_ms) for s, r in zip(specs, ratios)])
        return table


__all__ = ["LatencyTable"]
