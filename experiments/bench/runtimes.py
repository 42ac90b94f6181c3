"""Serving runtimes: paired-timing noise and lookup-table error per latency backend.

ResNet-20 on Fashion-MNIST shapes (1x28x28), the committed checkpoint, dense vs a pruned
variant (uniform 0.5 channels, blocks 2, 5, 8 dropped). Writes ``experiments/results/runtimes.md``.

    python -m experiments.bench.runtimes [--repeats 8] [--sections paired,table] [--batches 1,32] [--threads 2]
        [--backends torch,onnxruntime,openvino] [--calibration 24] [--test-policies 20] [--append]
    python -m experiments.bench.runtimes --sections rows [--settings resnet20:1:onnxruntime,...] [--episodes 40] [--epochs 1]
    python -m experiments.bench._deploy_rows section   # rebuild the rows section from runtimes_rows/*.json

The paired, prepare and table sections are written (or appended, ``--append``) above a marker;
the rows section after the marker is always rebuilt from every setting's JSON.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from autoprune.graph import Policy, PrunableGraph, apply_policy
from autoprune.graph.check import default_cache_dir
from autoprune.graph.safety import verified_graph
from autoprune.measure.latency import PairedTimer, measure_latency
from autoprune.measure.schedule import PairedSchedule
from autoprune.training.baseline import load_model_weights
from autoprune.zoo import build_model

from ._common import RESULTS, _version, header, table

CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "resnet20-fashion_mnist.pt"
THREADS = 2  # --threads
ONLY = ("torch", "onnxruntime", "openvino")  # --backends

#: (label, backend name, backend options)
BACKENDS = [
    ("PyTorch eager", "torch", {}),
    ("ONNX Runtime, spinning, per-session pools (ORT's and autoprune's default)", "onnxruntime", {"thread_pool": "per-session"}),
    ("ONNX Runtime, no spinning, per-session pools", "onnxruntime", {"thread_pool": "per-session", "spinning": False}),
    # after the per-session rows: once ONNX Runtime's shared pool exists, every session of the process uses it
    ("ONNX Runtime, spinning, shared pool", "onnxruntime", {"thread_pool": "shared"}),
    ("OpenVINO, CPU, LATENCY hint", "openvino", {}),
]

#: (label, PairedTimer.ratio keywords at batch 1)
METHODS = [
    ("calls 3+3 x 15 rounds, min (previous default)", {"calls_per_round": 3, "interleave": "calls", "statistic": "min"}),
    ("calls 10+10 x 15 rounds, min", {"calls_per_round": 10, "interleave": "calls", "statistic": "min"}),
    ("blocks of 10 x 15 rounds, min", {"calls_per_round": 10, "interleave": "blocks", "statistic": "min"}),
    ("blocks of 10 x 15 rounds, median", {"calls_per_round": 10, "interleave": "blocks", "statistic": "median"}),
    ("calls 3+3 x 15 rounds, min, thread CPU clock", {"calls_per_round": 3, "interleave": "calls", "statistic": "min", "clock": "thread"}),
    ("calls 10+10 x 15 rounds, min, thread CPU clock", {"calls_per_round": 10, "interleave": "calls", "statistic": "min", "clock": "thread"}),
]


def models() -> tuple[torch.nn.Module, torch.nn.Module, PrunableGraph]:
    torch.manual_seed(0)
    dense = build_model("resnet20", in_channels=1, num_classes=10, input_size=28)
    load_model_weights(dense, CHECKPOINT)
    dense.eval()
    graph, _ = verified_graph(dense, torch.randn(1, 1, 28, 28), drop_blocks=True, cache_dir=default_cache_dir())
    policy = Policy.uniform(graph.unit_names, 0.5, drop=graph.block_names[1::3])
    return dense, apply_policy(dense, policy, graph=graph).eval(), graph


def paired_section(repeats: int, batches: list[int]) -> tuple[str, list[tuple]]:
    dense, pruned, _ = models()
    rows, summary, settings = [], [], {}
    for batch in batches:
        x = torch.randn(batch, 1, 28, 28)
        for label, name, options in BACKENDS:
            if name not in ONLY:
                continue
            timer = PairedTimer(dense, x, backend=name, threads=THREADS, backend_options=options)
            cand = timer.prepare(pruned)
            settings[label] = timer.settings()
            n_seq = 200 if batch == 1 else 30
            seq = []
            for _ in range(repeats):
                ref_ms = measure_latency(timer._reference, x, warmup=5, repeats=n_seq, threads=THREADS).median_ms
                seq.append(measure_latency(cand, x, warmup=5, repeats=n_seq, threads=THREADS).median_ms / ref_ms)
            rows.append((label, batch, f"sequential medians of {n_seq}", statistics.mean(seq), _cv(seq), ref_ms, "-"))
            print(*rows[-1], np.round(seq, 3), file=sys.stderr, flush=True)
            for method, kwargs in METHODS:
                if kwargs.get("clock") == "thread" and not timer.backend.runs_on_calling_thread:
                    continue
                if batch > 1 and kwargs["calls_per_round"] > 3:
                    kwargs = {**kwargs, "calls_per_round": 5}
                    method = method.replace("10", "5")
                values, seconds = [], []
                for _ in range(repeats):
                    stats = timer.ratio(cand, PairedSchedule(rounds=15, **kwargs))
                    values.append(stats.ratio)
                    seconds.append(stats.elapsed_s)
                rows.append((label, batch, method, statistics.mean(values), _cv(values), stats.ref_median_ms, statistics.mean(seconds)))
                print(*rows[-1], np.round(values, 3), file=sys.stderr, flush=True)
                summary.append((name, options, batch, method, _cv(values)))
            del timer, cand
    text = (
        f"## Paired latency-ratio noise ({repeats} repeated measurements of the same pair)\n\n"
        f"Pruned / dense ResNet-20 (uniform 0.5 channels, 3 of 9 blocks dropped), {THREADS} thread(s). "
        "CV is over the repeats; 'sequential' is two back-to-back medians, for comparison.\n\n"
        + table(["backend", "batch", "method", "mean ratio", "CV", "dense ms", "s / measurement"],
                [(r[0], r[1], r[2], r[3], f"{100 * r[4]:.1f}%", r[5], r[6]) for r in rows])
        + "\nBackend settings as recorded with every result:\n\n"
        + "".join(f"- {label}: `{s}`\n" for label, s in settings.items())
        + "\n"
    )
    return text, summary


TABLE_BACKENDS = [
    ("PyTorch eager", "torch", {}),
    ("ONNX Runtime (spinning, shared pool)", "onnxruntime", {"thread_pool": "shared"}),  # the paired section leaves the shared pool in place
    ("OpenVINO (CPU, LATENCY)", "openvino", {}),
]


def table_section(batches: list[int], n_test: int, n_random: int) -> str:
    """Fitted per-backend tables: calibration cost, cache reuse, prediction error on random policies.

    On the serving runtimes, once with free channel counts and once rounded to the backend's
    channel multiple (``pruning.round_to: auto``, what a search there uses).
    """
    import tempfile

    from autoprune.measure.backends import backend_class
    from autoprune.measure.runtime_table import calibration_policies
    from autoprune.measure.variant_cache import calibrate_on_backend

    dense, _, graph = models()
    rows = []
    for batch in batches:
        x = torch.randn(batch, 1, 28, 28)
        for label, name, options in TABLE_BACKENDS:
            if name not in ONLY:
                continue
            timer = PairedTimer(dense, x, backend=name, threads=THREADS, backend_options=options)
            clock = {"clock": "thread"} if timer.backend.runs_on_calling_thread else {}
            for round_to in dict.fromkeys([None, backend_class(name).channel_multiple()]):
                with tempfile.TemporaryDirectory() as cache:
                    t0 = time.perf_counter()
                    fitted, got = calibrate_on_backend(dense, graph, timer, batch_size=batch, n_random=n_random, cache_dir=cache,
                                                          schedule=PairedSchedule(rounds=10, **clock), round_to=round_to)
                    first_s = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    _, got_again = calibrate_on_backend(dense, graph, timer, batch_size=batch, n_random=n_random, cache_dir=cache,
                                                           schedule=PairedSchedule(rounds=10, **clock), round_to=round_to)
                    second_s = time.perf_counter() - t0
                assert not got["from_cache"] and got_again["from_cache"]
                dense_specs = graph.specs_for({}, (), batch_size=batch)
                tests = calibration_policies(graph.unit_names, graph.block_names, n_random=n_test, seed=777)[6:]
                errs, errs_drop, measured_all = [], [], []
                for pol in tests:
                    measured = timer.ratio(apply_policy(dense, pol, graph=graph, round_to=round_to).eval(), PairedSchedule(rounds=10, **clock)).ratio
                    predicted = fitted.predict_ratio(graph.specs_for(pol.ratios, pol.drop, round_to=round_to, batch_size=batch), dense_specs)
                    (errs_drop if pol.drop else errs).append(abs(predicted - measured) / measured)
                    measured_all.append(measured)
                every = errs + errs_drop
                rows.append((label + (" (thread clock)" if clock else ""), batch, round_to or "-", len(fitted), first_s, second_s, len(every),
                             f"{min(measured_all):.2f}-{max(measured_all):.2f}", float(np.median(every)), float(np.percentile(every, 90)),
                             float(np.median(errs_drop)) if errs_drop else float("nan")))
                print(*rows[-1], file=sys.stderr, flush=True)
    return (
        f"## Latency lookup table fitted per backend ({n_random}+6 calibration variants, {n_test} random test policies)\n\n"
        "Calibration: dense, uniform 0.25/0.5/0.75, two uniform with block drops and random policies (ratios up to 0.8, "
        "each block dropped with p=0.25), pruned by the real surgery and timed paired against dense on the backend; "
        "non-negative least squares on layer-shape features (`autoprune.measure.runtime_table`). Test policies are other "
        "random policies; error = |predicted - measured| / measured latency ratio (measured: paired, 10 rounds). "
        "`round_to`: channel counts rounded to this multiple by the surgery (`-`: free counts; the serving runtimes' "
        "row with a number is what `pruning.round_to: auto` searches with).\n\n"
        + table(["backend", "batch", "round_to", "calibration models", "calibration s", "second search (cache) s", "test policies",
                 "measured ratios", "median error", "p90 error", "median error, with drops"],
                [(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], f"{100 * r[8]:.1f}%", f"{100 * r[9]:.1f}%", f"{100 * r[10]:.1f}%") for r in rows])
        + "\n"
    )


def prepare_section(batches: list[int], repeats: int) -> str:
    """Per-candidate preparation cost (export + session/compilation) per backend: what a search pays per episode."""
    dense, pruned, _ = models()
    rows = []
    for batch in batches:
        x = torch.randn(batch, 1, 28, 28)
        for label, name, options in TABLE_BACKENDS:
            if name not in ONLY:
                continue
            timer = PairedTimer(dense, x, backend=name, threads=THREADS, backend_options=options)
            seconds = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                timer.prepare(pruned)
                seconds.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            stats = timer.ratio(timer.prepare(pruned))
            measure_s = time.perf_counter() - t0
            rows.append((label, batch, float(np.median(seconds)), stats.elapsed_s, measure_s))
            print(*rows[-1], file=sys.stderr, flush=True)
    return (
        f"## Cost per candidate ({repeats} preparations, median)\n\n"
        "Preparation = export to ONNX and session creation or compilation (none for eager); then one paired "
        "measurement at the backend's default schedule.\n\n"
        + table(["backend", "batch", "prepare s", "paired measurement s", "prepare + measurement s"], rows)
        + "\n"
    )


def _cv(values: list[float]) -> float:
    return float(np.std(values, ddof=1) / np.mean(values)) if len(values) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--sections", default="paired,table")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--test-policies", type=int, default=20)
    parser.add_argument("--backends", default="torch,onnxruntime,openvino")
    parser.add_argument("--append", action="store_true", help="append to runtimes.md instead of rewriting it")
    parser.add_argument("--calibration", type=int, default=24, help="random calibration policies (plus 6 uniform ones)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of every backend (1 on an overloaded machine)")
    parser.add_argument("--settings", default="resnet20:1:onnxruntime,mobilenetv2:1:onnxruntime,resnet20:32:onnxruntime,resnet20:1:openvino",
                        help="rows section: MODEL:BATCH:BACKEND settings to run ('' rebuilds the section from the saved JSONs)")
    parser.add_argument("--episodes", type=int, default=40, help="rows section: Optuna episodes per search")
    parser.add_argument("--epochs", type=float, default=1, help="rows section: fine-tune epochs (distillation on)")
    parser.add_argument("--target", type=float, default=0.5, help="rows section: latency target, fraction of dense")
    args = parser.parse_args()
    sections = args.sections.split(",")
    batches = [int(b) for b in args.batches.split(",")]
    global THREADS, ONLY
    THREADS = args.threads
    ONLY = tuple(args.backends.split(","))
    torch.set_num_threads(THREADS)
    start = time.perf_counter()
    versions = ", ".join(f"{n} {_version(n)}" for n in ("onnxruntime", "onnx", "openvino"))
    load = open("/proc/loadavg").read().split()[:3]
    text = (
        header("Serving runtimes: paired timing and lookup tables per backend", THREADS)
        + f"- runtimes: {versions}\n- load average at start (1, 5, 15 min): {' '.join(load)} on {os.cpu_count()} cores\n\n"
    )
    if "paired" in sections:
        part, _ = paired_section(args.repeats, batches)
        text += part
    if "prepare" in sections:
        text += prepare_section(batches, args.repeats)
    if "table" in sections:
        text += table_section(batches, args.test_policies, args.calibration)
    if "rows" in sections:  # one JSON per setting; the section at the end of runtimes.md is rebuilt from all of them
        from ._deploy_rows import run_setting, write_section

        for setting in filter(None, args.settings.split(",")):
            model, batch, backend = setting.split(":")
            run_setting(model, int(batch), backend, episodes=args.episodes, epochs=args.epochs, target=args.target, threads=THREADS)
        print(f"wrote {write_section()}")
        if sections == ["rows"]:
            return
    text += f"Total time {time.perf_counter() - start:.0f} s; load average at the end: {' '.join(open('/proc/loadavg').read().split()[:3])}.\n"
    from ._deploy_rows import MARKER, write_section

    path = RESULTS / "runtimes.md"
    old = path.read_text().split(MARKER, 1)[0] if args.append and path.exists() else ""
    path.write_text((old.rstrip("\n") + "\n\n---\n\n" if old.strip() else "") + text)
    write_section(path)  # the rows section stays last, rebuilt from its JSON files
    print(text)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
