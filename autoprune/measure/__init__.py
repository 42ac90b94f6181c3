"""Measurement: latency backends (protocol + registry), paired timing, MACs and size, the latency lookup table.

Backends needing an extra (``onnxruntime``) are imported only when named.
"""

from autoprune.measure.latency import BACKENDS, PairedTimer, count_macs_params, get_backend, measure_latency, register_backend
from autoprune.measure.table import LatencyTable

__all__ = ["BACKENDS", "LatencyTable", "PairedTimer", "count_macs_params", "get_backend", "measure_latency", "register_backend"]
