"""Latency-table cache benchmark: what a ResNet-32 pays for its latency table after a ResNet-20 filled the cache.

For each backend, with ``latency.table_cache`` on, in a fresh cache folder:

1. ResNet-20: the latency model is built (dense timing, table calibration) and the table predicts
   ``--predictions`` random policies, as a search's lookup-table clipping would;
2. ResNet-32 on that warm cache: the same;
3. ResNet-32 on a second, empty cache folder: the same (what it paid before the cache).

Reported: wall seconds of steps 2 and 3, the entries reused and measured, and the seconds the
cache estimates it saved. On eager ``torch`` the entries are per-layer timings
(``autoprune/measure/layer_cache.py``); on a serving runtime (``onnxruntime``) they are the
whole-model calibration variants, pooled into the fit of a model made of the same layer specs
(``autoprune/measure/variant_cache.py``). For a serving runtime the bench then measures
``--tests`` other random ResNet-32 policies paired against dense (10 rounds) and reports each
table's prediction error on them: the fresh fit (step 3), the pooled fit (step 2), the pooled
fit's own variants without the donor, and the donor's variants pooled with the first k random
variants of the fresh fit's measurements (the same policies: one seed), for several k.
Models have random weights (latency does not depend on them), 1x28x28 inputs, batch 1.

    python -m experiments.bench.table_cache [--backends torch,onnxruntime] [--predictions 200] [--tests 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from autoprune.graph.prunable import PrunableGraph
from autoprune.graph.surgery import apply_policy
from autoprune.measure.backends import backend_class
from autoprune.measure.latency_model import BACKEND_CALIBRATION_RANDOM, LatencyModel
from autoprune.measure.runtime_table import FittedLatencyTable, calibration_policies
from autoprune.measure.schedule import PairedSchedule
from autoprune.measure.settings import LatencySettings
from autoprune.measure.variant_cache import REUSE_RANDOM, VariantTimingCache, runtime_context
from autoprune.zoo import build_model

from ._common import RESULTS, header, table, write

MAX_RATIO = 0.8
#: Random variants of the new model pooled with the donor's, in the error-by-k rows.
K_CURVE = (0, 2, 4, 8, 24)


def fit(name: str, backend: str, threads: int, cache: Path, predictions: int) -> tuple[float, dict, LatencyModel, torch.nn.Module]:
    """Wall seconds of building ``name``'s latency model on ``backend`` and predicting random policies, its cache summary, the model."""
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
    return time.perf_counter() - t0, lm.cache_summary(), lm, model


def errors(table: FittedLatencyTable, lm: LatencyModel, tests: list, measured: list[float]) -> tuple[float, float]:
    """Median and 90th percentile of ``|predicted - measured| / measured`` over the test policies (fractions)."""
    e = [abs(table.predict_ratio(lm.graph.specs_for(p.ratios, p.drop, round_to=lm.round_to, batch_size=1), lm.dense_specs) - m) / m
         for p, m in zip(tests, measured)]
    return float(np.median(e)), float(np.percentile(e, 90))


def runtime_errors(backend: str, warm: Path, lm_warm: LatencyModel, lm_cold: LatencyModel, model: torch.nn.Module, n_tests: int) -> list[tuple]:
    """Prediction errors of the fresh, pooled and partly pooled ResNet-32 tables on measured random policies."""
    graph = lm_cold.graph
    tests = calibration_policies(graph.unit_names, graph.block_names, max_ratio=MAX_RATIO, n_random=n_tests, seed=777)[6:]
    measured = [lm_cold.measure(apply_policy(model, p, graph=graph, round_to=lm_cold.round_to).eval(), PairedSchedule(rounds=10)).ratio
                for p in tests]
    print(f"{backend}: measured ratios {min(measured):.2f}-{max(measured):.2f}", file=sys.stderr, flush=True)
    rows = [("fresh fit (empty cache)", len(lm_cold.table), 0, *errors(lm_cold.table, lm_cold, tests, measured)),
            ("pooled fit (after resnet20)", len(lm_warm.table), sum(d["variants"] for d in lm_warm.table.donors),
             *errors(lm_warm.table, lm_cold, tests, measured))]

    def specs_of(policies: list) -> list:
        return [graph.specs_for(p.ratios, p.drop, round_to=lm_cold.round_to, batch_size=1) for p in policies]

    own = specs_of(calibration_policies(graph.unit_names, graph.block_names, max_ratio=MAX_RATIO, n_random=REUSE_RANDOM))
    alone = FittedLatencyTable()
    alone.fit(list(zip(own, (s["ratio"] for s in lm_warm.table.samples))))
    rows.append(("pooled fit's own variants, no donor", len(own), 0, *errors(alone, lm_cold, tests, measured)))
    context = runtime_context(lm_cold.timer.settings(), batch_size=1, schedule=PairedSchedule(rounds=10))
    donors = VariantTimingCache(warm / "variants", context).donors(lm_cold.dense_specs)
    fresh = specs_of(calibration_policies(graph.unit_names, graph.block_names, max_ratio=MAX_RATIO, n_random=BACKEND_CALIBRATION_RANDOM))
    structured = len(fresh) - BACKEND_CALIBRATION_RANDOM
    for k in K_CURVE:
        part = FittedLatencyTable()
        n = structured + k
        part.fit(list(zip(fresh[:n], (s["ratio"] for s in lm_cold.table.samples[:n]))), [(d.features, d.ratios) for d in donors])
        rows.append((f"donor + fresh fit's first {k} random variants", n, sum(len(d.ratios) for d in donors), *errors(part, lm_cold, tests, measured)))
    return [(backend, label, n, r, f"{100 * med:.1f}%", f"{100 * p90:.1f}%") for label, n, r, med, p90 in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backends", default="torch,onnxruntime")
    ap.add_argument("--predictions", type=int, default=200)
    ap.add_argument("--tests", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows, error_rows = [], []
    for backend in a.backends.split(","):
        eager = backend_class(backend).eager
        with tempfile.TemporaryDirectory() as warm, tempfile.TemporaryDirectory() as cold:
            s20, c20, lm20, _ = fit("resnet20", backend, a.threads, Path(warm), a.predictions)
            lm20.close()
            s_warm, c_warm, lm_warm, _ = fit("resnet32", backend, a.threads, Path(warm), a.predictions)
            lm_warm.close()  # its table is kept; one live session at a time
            s_cold, c_cold, lm_cold, model = fit("resnet32", backend, a.threads, Path(cold), a.predictions)
            if not eager:
                error_rows += runtime_errors(backend, Path(warm), lm_warm, lm_cold, model, a.tests)
            lm_cold.close()
        for label, s, c in (("resnet20, empty cache", s20, c20), ("resnet32 after resnet20", s_warm, c_warm),
                            ("resnet32, empty cache", s_cold, c_cold)):
            rows.append((backend, label, s, c["unit"], c["reused"], c["measured"], c["seconds_saved"]))
        rows.append((backend, "resnet32: saved (empty - after resnet20)", s_cold - s_warm, "", "", "", ""))
        print(rows[-4:], flush=True)
    text = header("Latency-table cache: ResNet-20 -> ResNet-32", a.threads)
    text += f"Latency model built and {a.predictions} random policies predicted, batch 1, 1x28x28, max ratio {MAX_RATIO}.\n\n"
    text += table(("backend", "model / cache", "wall s", "unit", "reused", "measured", "estimated s saved"), rows)
    if error_rows:
        text += (f"\n## Prediction error of the ResNet-32 table on a serving runtime ({a.tests} measured random policies)\n\n"
                 "Error = |predicted - measured| / measured latency ratio; measured: paired against dense, 10 rounds, once for every row. "
                 "`own variants`: the ResNet-32 variants in the fit (dense included); `donor rows`: ResNet-20 variants pooled in.\n\n")
        text += table(("backend", "table", "own variants", "donor rows", "median error", "p90 error"), error_rows)
    write(RESULTS / "table_cache.md", text)


if __name__ == "__main__":
    main()
