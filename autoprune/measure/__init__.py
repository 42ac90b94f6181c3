"""Measurement: latency backends (base class + registry), paired timing on a schedule, MACs and size, lookup tables, the search's latency model.

Backends needing an extra (``onnxruntime``, ``openvino``) are imported only when named. The
per-backend latency table fitted to measurements on the backend is
:mod:`autoprune.measure.runtime_table`; what a search asks about latency is
:class:`autoprune.measure.latency_model.LatencyModel`; "dense vs pruned on the serving backend
and on eager PyTorch" is :func:`autoprune.measure.compare.compare_to_dense`.
"""

from autoprune.measure.backends import BACKENDS, LatencyBackend, backend_class, get_backend, register_backend
from autoprune.measure.latency import PairedTimer, count_macs_params, measure_latency
from autoprune.measure.schedule import PairedSchedule
from autoprune.measure.settings import LatencySettings
from autoprune.measure.table import LatencyTable

__all__ = [
    "BACKENDS", "LatencyBackend", "LatencySettings", "LatencyTable", "PairedSchedule", "PairedTimer", "backend_class",
    "count_macs_params", "get_backend", "measure_latency", "register_backend",
]  # fmt: skip
