"""How much a latency ratio moves from one fresh process to the next, per timing protocol, with the protocols interleaved in time.

A paired ratio measured in one process can be tight (+-0.4%) and still miss the next process by
20%: the protocols bench (:mod:`experiments.bench.protocols`) found two fresh processes timing the
same pair on ONNX Runtime's shared pool at 0.417 and 0.527, each +-0.2%. What the user gets is a
new process, so the figure that decides a budget must be stable across processes, not only within
one. This bench measures that spread directly.

Pairs (ResNet-20, the committed Fashion-MNIST checkpoint, batch 1, 1x28x28): dense against

- ``uniform``: uniform 0.5 channels, no block dropped (the shape of what ``make demo`` delivers);
- ``uniform+drop``: the same with blocks 2, 5, 8 dropped (the pair of :mod:`experiments.bench.runtimes`).

For ``--processes`` rounds, every protocol gets one fresh process per round
(:func:`autoprune.measure.fresh.remeasure_in_fresh_process`, ``protocol="serving"`` so the options
are used as given), in an order rotated each round, so a slow spell of the machine falls on all
protocols alike. Per protocol and pair it reports the median ratio over processes, the
between-process CV and min-max, the median within-process 95% half-width, and the share of
processes within +-5% of the median (what "the reported ratio is within 5% of a fresh
re-measure" needs).

Writes ``experiments/results/process_spread.md`` and one JSON of raw rows beside it. Run it alone:

    ../shared/tools/machine-lock bench python -m experiments.bench.process_spread [--processes 8] [--rounds 25]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from autoprune.graph.policy import Policy
from autoprune.graph.surgery import apply_policy
from autoprune.measure.fresh import ZooModel, remeasure_in_fresh_process

from ._common import RESULTS, git_commit, header, table
from .runtimes import models

#: (label, backend, threads, options, schedule). Thread counts are the process's intra-op threads.
PROTOCOLS = [
    ("ONNX Runtime, shared pool (spinning), blocks of 10", "onnxruntime", 2, {"thread_pool": "shared"}, {"calls_per_round": 10, "interleave": "blocks"}),
    ("ONNX Runtime, per-session spinning (serving default), blocks of 10", "onnxruntime", 2,
     {"thread_pool": "per-session", "spinning": True}, {"calls_per_round": 10, "interleave": "blocks"}),
    ("ONNX Runtime, per-session no spinning, interleaved calls x10", "onnxruntime", 2,
     {"thread_pool": "per-session", "spinning": False}, {"calls_per_round": 10, "interleave": "calls"}),
    ("ONNX Runtime, per-session no spinning, blocks of 10", "onnxruntime", 2,
     {"thread_pool": "per-session", "spinning": False}, {"calls_per_round": 10, "interleave": "blocks"}),
    ("ONNX Runtime, 1 thread, blocks of 10", "onnxruntime", 1, {"thread_pool": "per-session"}, {"calls_per_round": 10, "interleave": "blocks"}),
    ("OpenVINO, LATENCY hint, blocks of 10", "openvino", 2, {}, {"calls_per_round": 10, "interleave": "blocks"}),
]
PAIRS = ("uniform", "uniform+drop")
ZOO = ZooModel("resnet20", in_channels=1, num_classes=10, input_size=28)


def pairs() -> tuple[torch.nn.Module, list[torch.nn.Module]]:
    """The dense model and the two pruned variants (see the module docstring)."""
    dense, dropped, graph = models()
    uniform = apply_policy(dense, Policy.uniform(graph.unit_names, 0.5), graph=graph).eval()
    return dense, [uniform, dropped]


def collect(args: argparse.Namespace) -> list[dict]:
    dense, candidates = pairs()
    x = torch.randn(1, 1, 28, 28)
    chosen = [p for p in PROTOCOLS if p[1] in args.backends]
    rows = []
    for r in range(args.processes):
        order = chosen[r % len(chosen):] + chosen[:r % len(chosen)]
        for label, backend, threads, options, schedule in order:
            start = time.time()
            try:
                m = remeasure_in_fresh_process(dense, candidates, x, backend=backend, threads=threads, backend_options=options,
                                               rounds=args.rounds, schedule=schedule, zoo=ZOO, protocol="serving")
            except Exception as e:  # noqa: BLE001 - a missing extra is a row, not the end of the run
                rows.append({"protocol": label, "round": r, "error": f"{type(e).__name__}: {' '.join(str(e).split())[:160]}"})
                continue
            rows.append({"protocol": label, "round": r, "start": start, "load": os.getloadavg()[0], "dense_ms": m.dense_ms,
                         "pairs": {name: {"ratio": q.ratio, "ci": [q.ci_low, q.ci_high]} for name, q in zip(PAIRS, m.ratios)}})
            print(f"round {r} {label}: dense {m.dense_ms:.3f} ms, " + ", ".join(f"{n} {q.ratio:.3f}" for n, q in zip(PAIRS, m.ratios)), flush=True)
    return rows


def summarise(rows: list[dict]) -> list[tuple]:
    out = []
    for label, *_ in PROTOCOLS:
        mine = [r for r in rows if r["protocol"] == label]
        if not mine:
            continue
        if all("error" in r for r in mine):
            out.append((label, "-", *(["-"] * 7), mine[0]["error"]))
            continue
        ok = [r for r in mine if "error" not in r]
        dense = [r["dense_ms"] for r in ok]
        for name in PAIRS:
            ratios = [r["pairs"][name]["ratio"] for r in ok]
            med = statistics.median(ratios)
            half = statistics.median((r["pairs"][name]["ci"][1] - r["pairs"][name]["ci"][0]) / 2 / r["pairs"][name]["ratio"] for r in ok)
            cv = statistics.stdev(ratios) / statistics.mean(ratios) if len(ratios) > 1 else float("nan")
            within = sum(abs(v / med - 1) <= 0.05 for v in ratios) / len(ratios)
            out.append((label, name, len(ok), med, cv, f"{min(ratios):.3f}-{max(ratios):.3f}", half, within,
                        f"{min(dense):.3f}-{max(dense):.3f}", ""))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--processes", type=int, default=8, help="fresh processes per protocol (default 8)")
    p.add_argument("--rounds", type=int, default=25, help="paired rounds per process (default 25)")
    p.add_argument("--backends", type=lambda s: s.split(","), default=["onnxruntime", "openvino"])
    args = p.parse_args()
    load = os.getloadavg()[0]
    rows = collect(args)
    cols = ["protocol", "pair", "processes", "median ratio", "between-process CV", "min-max", "median within-process 95% half-width",
            "share within +-5% of median", "dense ms min-max", "note"]
    text = (header("Process-to-process spread of latency ratios, protocols interleaved in time", 2)
            + f"- commit {git_commit()}; load average at start {load:.2f}; {args.processes} fresh processes per protocol, "
              f"{args.rounds} paired rounds each (after 5 warm-up rounds); protocol order rotated every round\n\n"
            + table(cols, summarise(rows)))
    (RESULTS / "process_spread.md").write_text(text)
    (RESULTS / "process_spread_rows.json").write_text(json.dumps({"args": vars(args), "load": load, "commit": git_commit(),
                                                                  "rows": rows}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
