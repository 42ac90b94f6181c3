"""A disk cache of per-layer latency measurements, keyed by layer spec, shared by every model.

**What is cached, and why at this granularity.** Two kinds of latency table exist
(:mod:`autoprune.measure.latency_model`):

- on eager PyTorch, :class:`~autoprune.measure.table.LatencyTable` micro-benchmarks each distinct
  layer spec (:meth:`LayerSpec.key <autoprune.graph.layers.LayerSpec.key>`: kind, channels,
  kernel, stride, padding, groups, input and output shapes with the batch, options) on a fresh
  module. Such a timing depends only on the spec and on how and where it was timed, never on the
  model the layer sits in, so it is the unit reused here: a ResNet-32 shares every conv shape of a
  ResNet-20 (same stage widths and resolutions), and a second model pays only for its new shapes;
- on a serving runtime, :class:`~autoprune.measure.runtime_table.FittedLatencyTable` is fitted to
  paired measurements of ~30 pruned variants *of one model* against that model's dense latency.
  Those are ratios of whole models, not per-layer timings (the runtime fuses layers), so their unit
  of reuse is the variant: :mod:`autoprune.measure.variant_cache` keeps them per model and pools
  them into the fit of a later model made of the same layer specs. Whole tables stay cached per
  architecture too (:func:`~autoprune.measure.runtime_table.calibrated_table`).

**The key** of an entry is the layer spec plus everything that changes its timing: the backend's
settings (:meth:`LatencyBackend.settings <autoprune.measure.backends.LatencyBackend.settings>`:
name, runtime version, threads, options), torch's version, the default dtype, the CPU kernels
torch dispatches to (its CPU capability, e.g. ``AVX2``, and whether oneDNN is on), the
micro-benchmark's counts (warmup, repeats, passes: the kept value is the fastest call of them),
the machine (:func:`~autoprune.measure.runtime_table.machine_id`: CPU model, cores, OS) and
:data:`FORMAT`. Each entry is a JSON file ``<folder>/<2 hex>/<sha256 of the key>.json`` holding
its whole key, so a hash collision or a stale file is detected, not trusted.

**Safety.** This module is the one writer of the folder; each file is written atomically (a
temporary file, then a rename: :func:`autoprune.paths.write_json_atomic`), so concurrent runs
never read half an entry. An unreadable, corrupt or mismatching entry is ignored with one warning
line and measured again (then overwritten). ``latency.table_cache: false`` turns every latency
table cache off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from autoprune.measure.runtime_table import machine_id
from autoprune.paths import write_json_atomic

log = logging.getLogger(__name__)

#: Version of the entry files and of what their timings mean (bump it when the micro-benchmark changes).
FORMAT = 1


@dataclass(frozen=True)
class CachedTiming:
    """One cached layer timing.

    Attributes:
        ms: The layer's latency in milliseconds per call (the table's raw entry).
        seconds: Wall seconds its measurement took (building the module, warm-up and timed calls).
    """

    ms: float
    seconds: float


class LayerTimingCache:
    """Per-layer timings on disk, shared by every model timed in the same context.

    Args:
        folder: Where entries live (created on the first write).
        context: What the timings depend on besides the layer spec (from :func:`timing_context`).

    Attributes:
        reused: Entries read from disk since creation.
        measured: Entries written since creation.
        seconds_saved: Sum of the stored measurement seconds of the reused entries (s).
    """

    def __init__(self, folder: str | os.PathLike, context: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.context = json.loads(json.dumps(context, sort_keys=True, default=str))
        self.reused = 0
        self.measured = 0
        self.seconds_saved = 0.0
        self._warned = False  # one warning line per cache for unreadable entries, one for unwritable ones
        self._write_warned = False

    def _key(self, spec_key: str) -> dict[str, Any]:
        return {"format": FORMAT, "spec": spec_key, "context": self.context}

    def path(self, spec_key: str) -> Path:
        """The file of the entry of ``spec_key`` (a :meth:`LatencyTable.key_of <autoprune.measure.table.LatencyTable.key_of>` string)."""
        digest = hashlib.sha256(json.dumps(self._key(spec_key), sort_keys=True).encode()).hexdigest()
        return self.folder / digest[:2] / f"{digest}.json"

    def get(self, spec_key: str) -> CachedTiming | None:
        """The cached timing of ``spec_key`` in this context, or None (missing, corrupt or another key: one warning line).

        A hit is counted in :attr:`reused` and :attr:`seconds_saved`.
        """
        path = self.path(spec_key)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            if data["key"] != self._key(spec_key):
                raise ValueError("its key differs (a stale or colliding entry)")
            hit = CachedTiming(float(data["ms"]), float(data["seconds"]))
            if not (hit.ms >= 0.0 and hit.seconds >= 0.0):
                raise ValueError(f"negative or NaN figures ({hit.ms!r} ms, {hit.seconds!r} s)")
        except (OSError, ValueError, KeyError, TypeError) as e:
            if not self._warned:
                log.warning("latency table cache: ignoring the unreadable entry %s (%s); measuring it again", path, e)
                self._warned = True
            else:
                log.debug("latency table cache: ignoring the unreadable entry %s (%s)", path, e)
            return None
        self.reused += 1
        self.seconds_saved += hit.seconds
        return hit

    def put(self, spec_key: str, ms: float, seconds: float) -> None:
        """Store a fresh timing (counted in :attr:`measured`); a folder that cannot be written costs one warning line, never the job.

        Args:
            spec_key: The spec's table key.
            ms: Its latency in milliseconds per call.
            seconds: Wall seconds its measurement took.
        """
        self.measured += 1
        path = self.path(spec_key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, {"key": self._key(spec_key), "ms": float(ms), "seconds": float(seconds)}, indent=None)
        except OSError as e:
            (log.debug if self._write_warned else log.warning)(
                "latency table cache: cannot write %s (%s); timings are kept for this run only", path, e.strerror or e)
            self._write_warned = True

    def summary(self) -> dict[str, float]:
        """``{"reused", "measured", "seconds_saved"}`` so far (counts, and seconds)."""
        return {"reused": self.reused, "measured": self.measured, "seconds_saved": self.seconds_saved}


def timing_context(backend_settings: dict[str, Any], *, threads: int, warmup: int, repeats: int, passes: int) -> dict[str, Any]:
    """What a per-layer timing depends on besides the layer spec: backend settings, versions, dtype, threads, counts, machine.

    Args:
        backend_settings: :meth:`LatencyBackend.settings <autoprune.measure.backends.LatencyBackend.settings>`
            of the backend the table models (name, runtime version, threads, options).
        threads: Intra-op threads of the micro-benchmarks.
        warmup, repeats, passes: The micro-benchmark's counts (:class:`~autoprune.measure.table.LatencyTable`).
    """
    return {
        "backend": dict(backend_settings),
        "threads": int(threads),
        "torch": torch.__version__,
        "dtype": str(torch.get_default_dtype()),
        "kernels": {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "mkldnn": bool(torch.backends.mkldnn.enabled)},
        "bench": {"warmup": warmup, "repeats": repeats, "passes": passes},
        "machine": machine_id(),
    }


__all__ = ["FORMAT", "CachedTiming", "LayerTimingCache", "timing_context"]
