"""Latency-table cache benchmark: what a ResNet-32 pays for its latency table after a ResNet-20 filled the cache.

For each backend, with ``latency.table_cache`` on, in a fresh cache folder:

1. ResNet-20: the latency model is built (dense timing, table calibration) and the table predicts
   ``--predictions`` random policies, as a search's lookup-table clipping would;
2. ResNet-32 on that warm cache: the same;
3. ResNet-32 on a second, empty cache folder: the same (what it paid before the cache).

Reported: wall seconds of steps 2 and 3, the entries reused and measured, and the seconds the
cache estimates it saved (the stored measurement times of the reused entries). Models have
random weights (latency does not depend on them), 1x28x28 inputs, batch 1.

    python -m experiments.bench.table_cache [--backends torch,onnxruntime] [--predictions 200] [--threads 2]

On ``onnxruntime`` the table is fitted to whole-model measurements of one architecture, which
another one cannot reuse (``autoprune/measure/layer_cache.py``): its ResNet-32 rows show it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from autoprune.graph.prunable import PrunableGraph
from autoprune.measure.backends import backend_class
from autoprune.measure.latency_model import LatencyModel
from autoprune.measure.settings import LatencySettings
from autoprune.zoo import build_model

from ._common import RESULTS, header, table, write

MAX_RATIO = 0.8


def fit(name: str, backend: str, threads: int, cache: Path, predictions: int) -> tuple[float, dict]:
    """Wall seconds of building ``name``'s latency model on ``backend`` and predicting random policies, and its cache summary."""
    torch.manual_seed(0)
    model = build_model(name, in_channels=1, num_classes=10, input_size=28).eval()
    x = torch.randn(1, 1, 28, 28)
    graph = PrunableGraph(model, x, drop_blocks=True)
    round_to = backend_class(backend).channel_multiple()
    t0 = time.perf_counter()
    lm = LatencyModel.build(model, graph, LatencySettings(backend=backend, threads=threads), example_input=x, max_ratio=MAX_RATIO,
                            round_to=round_to, block_names=graph.block_names, table_cache=cache)
    rng = np.random.default_rng(1)
    for _ in range(predictions):
        lm.predict_ratio({u: float(rng.uniform(0, MAX_RATIO)) for u in graph.unit_names},
                         tuple(b for b in graph.block_names if rng.random() < 0.25))
    seconds = time.perf_counter() - t0
    summary = lm.cache_summary()
    lm.close()
    return seconds, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backends", default="torch,onnxruntime")
    ap.add_argument("--predictions", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows = []
    for backend in a.backends.split(","):
        with tempfile.TemporaryDirectory() as warm, tempfile.TemporaryDirectory() as cold:
            s20, c20 = fit("resnet20", backend, a.threads, Path(warm), a.predictions)
            s_warm, c_warm = fit("resnet32", backend, a.threads, Path(warm), a.predictions)
            s_cold, c_cold = fit("resnet32", backend, a.threads, Path(cold), a.predictions)
        for label, s, c in (("resnet20, empty cache", s20, c20), ("resnet32 after resnet20", s_warm, c_warm),
                            ("resnet32, empty cache", s_cold, c_cold)):
            rows.append((backend, label, s, c["unit"], c["reused"], c["measured"], c["seconds_saved"]))
        rows.append((backend, "resnet32: saved (empty - after resnet20)", s_cold - s_warm, "", "", "", ""))
        print(rows[-4:], flush=True)
    text = header("Latency-table cache: ResNet-20 -> ResNet-32", a.threads)
    text += f"Latency model built and {a.predictions} random policies predicted, batch 1, 1x28x28, max ratio {MAX_RATIO}.\n\n"
    text += table(("backend", "model / cache", "wall s", "unit", "reused", "measured", "estimated s saved"), rows)
    write(RESULTS / "table_cache.md", text)


if __name__ == "__main__":
    main()
