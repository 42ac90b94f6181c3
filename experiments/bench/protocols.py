"""Which timing protocol to trust per backend: paired-ratio noise and in-process vs fresh-process agreement.

ResNet-20 on Fashion-MNIST shapes (1x28x28), the committed checkpoint, dense vs a pruned variant
(uniform 0.5 channels, blocks 2, 5, 8 dropped), as in :mod:`experiments.bench.runtimes`. For each
protocol (backend options: spinning on/off, per-session or shared pools; calls per round) it
measures the pair ``--repeats`` times in this process and ``--fresh`` times in fresh processes
(:func:`autoprune.measure.fresh.remeasure_in_fresh_process`, the protocol of a search's finalists
and of the final table), and reports:

- the CV of the repeated in-process ratios (how much one search figure moves);
- the median per-round CV (what a measurement's own interval sees);
- the median of the fresh-process ratios and the relative gap ``in-process / fresh - 1`` (the bias
  a search's figures carry against what is delivered);
- the median 95% half-width of a fresh measurement (whether ``latency.rel_ci`` 0.03 is reachable).

Writes the "Timing protocols" section of ``experiments/results/runtimes.md`` (replacing an earlier
one; the rest of the file is kept). Run it alone on the machine:

    ../shared/tools/machine-lock bench python -m experiments.bench.protocols [--repeats 6] [--fresh 3] [--rounds 25]
        [--calls 3,10,40] [--threads 2] [--backends torch,onnxruntime,openvino]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
from pathlib import Path

import torch

from autoprune.measure.fresh import ZooModel, remeasure_in_fresh_process
from autoprune.measure.latency import PairedTimer
from autoprune.measure.schedule import PairedSchedule

from ._common import RESULTS, header, table
from .runtimes import models

#: (label, backend, options): per-session rows first; once ONNX Runtime's shared pool exists in a
#: process every later session uses it, so the shared row comes last.
PROTOCOLS = [
    ("PyTorch eager", "torch", {}, "calls"),
    ("ONNX Runtime, spinning, per-session pools", "onnxruntime", {"thread_pool": "per-session", "spinning": True}, "calls"),
    ("ONNX Runtime, spinning, per-session pools", "onnxruntime", {"thread_pool": "per-session", "spinning": True}, "blocks"),
    ("ONNX Runtime, no spinning, per-session pools", "onnxruntime", {"thread_pool": "per-session", "spinning": False}, "calls"),
    ("ONNX Runtime, no spinning, per-session pools", "onnxruntime", {"thread_pool": "per-session", "spinning": False}, "blocks"),
    ("OpenVINO, CPU, LATENCY hint", "openvino", {}, "calls"),
    ("OpenVINO, CPU, LATENCY hint", "openvino", {}, "blocks"),
    ("ONNX Runtime, spinning, shared pool", "onnxruntime", {"thread_pool": "shared"}, "calls"),
    ("ONNX Runtime, spinning, shared pool", "onnxruntime", {"thread_pool": "shared"}, "blocks"),
]
ZOO = ZooModel("resnet20", in_channels=1, num_classes=10, input_size=28)
BEGIN, END = "<!-- timing protocols: experiments/bench/protocols.py -->\n", "<!-- /timing protocols -->\n"


def _cv(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.mean(values) if len(values) > 1 else float("nan")


def measure(name: str, options: dict, calls: int, interleave: str, *, repeats: int, fresh: int, rounds: int, threads: int) -> tuple:
    """One protocol's row: in-process CV, per-round CV, in-process and fresh medians, their gap, fresh half-width."""
    dense, pruned, _ = models()
    x = torch.randn(1, 1, 28, 28)
    schedule = {"calls_per_round": calls, "interleave": interleave}
    timer = PairedTimer(dense, x, backend=name, threads=threads, backend_options=options)
    cand = timer.prepare(pruned)
    timer.ratio(cand, PairedSchedule(rounds=5, **schedule))  # warm-up
    inside = [timer.ratio(cand, PairedSchedule(rounds=rounds, **schedule)) for _ in range(repeats)]
    del cand
    timer.close()  # no session of this process competes with the children
    gc.collect()
    outside = [remeasure_in_fresh_process(dense, [pruned], x, backend=name, threads=threads, backend_options=options, rounds=rounds,
                                          schedule=schedule, zoo=ZOO).ratios[0] for _ in range(fresh)]
    in_median = statistics.median(s.ratio for s in inside)
    fresh_median = statistics.median(r.ratio for r in outside)
    half = statistics.median((r.ci_high - r.ci_low) / 2 / r.ratio for r in outside)
    return (_cv([s.ratio for s in inside]), statistics.median(s.cv for s in inside), in_median, fresh_median,
            in_median / fresh_median - 1, half)


def section(args: argparse.Namespace) -> str:
    rows = []
    for label, name, options, interleave in PROTOCOLS:
        if name not in args.backends:
            continue
        for calls in args.calls:
            try:
                found = measure(name, options, calls, interleave, repeats=args.repeats, fresh=args.fresh, rounds=args.rounds, threads=args.threads)
            except Exception as e:  # noqa: BLE001 - a missing extra or a refused option is a row, not the end of the run
                rows.append((label, interleave, calls, *(["-"] * 6), f"{type(e).__name__}: {' '.join(str(e).split())[:120]}"))
                continue
            rows.append((label, interleave, calls, *found, ""))
    best: dict[str, tuple] = {}  # per backend: the row with the lowest fresh half-width among those whose |gap| <= 3%
    for row, (_, name, _, _) in zip(rows, [p for p in PROTOCOLS if p[1] in args.backends for _ in args.calls]):
        if row[3] != "-" and abs(row[7]) <= 0.03 and (name not in best or row[8] < best[name][8]):
            best[name] = row
    rows = [(*r[:-1], ("**chosen** " if r in best.values() else "") + r[-1]) for r in rows]
    cols = ["protocol", "interleave", "calls/round", "CV of repeated in-process ratios", "median per-round CV", "in-process ratio",
            "fresh-process ratio", "in-process / fresh - 1", "fresh 95% half-width", "note"]
    return (BEGIN + header("Timing protocols: paired-ratio noise and in-process vs fresh-process agreement", args.threads)
            + f"- load average at start: {os.getloadavg()[0]:.2f}; {args.repeats} in-process repeats and {args.fresh} fresh processes "
              f"of {args.rounds} rounds per row, batch 1, {args.threads} threads\n"
            + "- **chosen** per backend: the row with the lowest fresh 95% half-width among those whose in-process / fresh gap "
              "is within +-3%; the backend's `ratio_protocol` (autoprune/measure/backends.py) is set from it\n\n"
            + table(cols, rows) + END)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--fresh", type=int, default=3)
    p.add_argument("--rounds", type=int, default=25)
    p.add_argument("--calls", type=lambda s: [int(c) for c in s.split(",")], default=[3, 10, 40])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--backends", type=lambda s: s.split(","), default=["torch", "onnxruntime", "openvino"])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    text = section(args)
    path: Path = RESULTS / "runtimes.md"
    old = path.read_text() if path.exists() else ""
    if BEGIN in old and END in old:
        before, rest = old.split(BEGIN, 1)
        old = before + rest.split(END, 1)[1]
    path.write_text(old.rstrip("\n") + "\n\n" + text if old else text)
    print(text)


if __name__ == "__main__":
    main()
