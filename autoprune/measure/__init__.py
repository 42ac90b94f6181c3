"""Measurement: latency backends (protocol + registry), paired timing, MACs and size, the latency lookup table.

Backends needing an extra (``onnxruntime``, ``openvino``) are imported only when named. The per-backend
latency table fitted to measurements on the backend is :mod:`autoprune.measure.runtime_table`.
"""

from autoprune.measure.latency import BACKENDS, PairedTimer, count_macs_params, get_backend, measure_latency, register_backend
from autoprune.measure.table import LatencyTable

__all__ = ["BACKENDS", "LatencyTable", "PairedTimer", "count_macs_params", "get_backend", "measure_latency", "register_backend"]
