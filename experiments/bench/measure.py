"""Foundation benchmark: measurement noise, lookup-table error, speed-up vs MACs, evaluation cost, proxy quality.

ResNet-20 on Fashion-MNIST (the committed baseline). Writes ``experiments/results/measure.md``.

    python -m experiments.bench.measure [--policies 50] [--spearman 10] [--ft-samples 54000]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch
from scipy.stats import spearmanr

from autoprune.app.experiment import build_evaluator, load_baseline
from autoprune.app.pipeline import apply_best
from autoprune.config.loading import parse_config
from autoprune.graph.policy import Policy
from autoprune.graph.surgery import apply_policy
from autoprune.measure.latency import PairedTimer, measure_latency
from autoprune.measure.schedule import PairedSchedule
from autoprune.objective.proxy import accuracy
from autoprune.training.finetune import FinetuneSettings, finetune
from autoprune.zoo import Split

from ._common import Goal, goals_report, header, table, write


def random_policy(ev, rng: np.random.Generator, drop_prob: float = 0.25) -> Policy:
    ratios = {u: float(rng.uniform(0.0, ev.max_ratio)) for u in ev.unit_names}
    drop = tuple(b for b in ev.block_names if rng.random() < drop_prob)
    return Policy(ratios, drop)


def noise_section(ev, policies: list[Policy], repeats: int) -> tuple[str, dict]:
    """CV of the latency ratio over repeated measurements: unpaired (two medians of 30) vs paired."""
    model, x = ev.model, ev.example_input
    unpaired_cv, paired_cv = [], []
    for pol in policies:
        pruned = apply_policy(model, pol, graph=ev.graph).eval()
        up, pa = [], []
        for _ in range(repeats):
            ref = measure_latency(model, x, warmup=5, repeats=30, threads=ev.latency.threads).median_ms
            cand = measure_latency(pruned, x, warmup=5, repeats=30, threads=ev.latency.threads).median_ms
            up.append(cand / ref)
            pa.append(ev.latency_model.measure(pruned, PairedSchedule(rounds=15)).ratio)
        unpaired_cv.append(float(np.std(up, ddof=1) / np.mean(up)))
        paired_cv.append(float(np.std(pa, ddof=1) / np.mean(pa)))
    rows = [
        ("unpaired: median of 30 calls each, back to back", statistics.mean(unpaired_cv), max(unpaired_cv)),
        ("paired: 15 interleaved rounds of 3+3 calls", statistics.mean(paired_cv), max(paired_cv)),
    ]
    text = (
        f"## Latency-ratio noise ({len(policies)} policies x {repeats} repeats, batch {ev.latency.batch_size})\n\n"
        + table(["method", "mean CV", "max CV"], rows)
        + "\n"
    )
    return text, {"paired_cv": statistics.mean(paired_cv), "unpaired_cv": statistics.mean(unpaired_cv)}


def table_section(ev, evaluations) -> tuple[str, dict]:
    errors = [abs(m.predicted_ratio - m.latency_ratio) / m.latency_ratio for _, m in evaluations]
    with_drop = [e for e, (p, _) in zip(errors, evaluations) if p.drop]
    without = [e for e, (p, _) in zip(errors, evaluations) if not p.drop]

    def row(name, errs):
        return (name, len(errs), float(np.median(errs)) if errs else float("nan"), float(np.percentile(errs, 90)) if errs else float("nan"))

    text = (
        "## Lookup-table prediction error (vs paired measurement)\n\n"
        + table(["policies", "n", "median rel. error", "p90 rel. error"], [row("all", errors), row("channels only", without), row("with block drops", with_drop)])
        + f"\nTable: {len(ev.latency_model.table)} micro-benchmarked layer shapes, calibration scale {ev.latency_model.table.scale:.3f}, offset {ev.latency_model.table.offset_ms:.3f} ms.\n\n"
    )
    return text, {"median_err": float(np.median(errors)), "p90_err": float(np.percentile(errors, 90))}


def speedup_section(ev, baseline) -> str:
    model = ev.model
    x1 = baseline.data.example_input(1)
    stages = [[b for b in ev.block_names if b.startswith(s)] for s in ("layer1", "layer2", "layer3")]
    configs = [
        ("uniform 30%", Policy.uniform(ev.unit_names, 0.3), None),
        ("uniform 50%", Policy.uniform(ev.unit_names, 0.5), None),
        ("uniform 50%, round_to 8", Policy.uniform(ev.unit_names, 0.5), 8),
        ("uniform 70%", Policy.uniform(ev.unit_names, 0.7), None),
        ("uniform 70%, round_to 8", Policy.uniform(ev.unit_names, 0.7), 8),
        ("drop 1 block per stage", Policy({}, tuple(s[0] for s in stages if s)), None),
        ("drop 2 blocks per stage", Policy({}, tuple(b for s in stages for b in s[:2])), None),
        ("drop 1/stage + uniform 30%", Policy.uniform(ev.unit_names, 0.3, drop=tuple(s[0] for s in stages if s)), None),
    ]
    from autoprune.measure.latency import count_macs_params

    dense_macs, _ = count_macs_params(model, x1)
    timers = {b: PairedTimer(model, baseline.data.example_input(b), threads=ev.latency.threads) for b in (1, 32)}
    rows = []
    for name, pol, round_to in configs:
        pruned = apply_policy(model, pol, graph=ev.graph, round_to=round_to).eval()
        macs, _ = count_macs_params(pruned, x1)
        lat = {b: t.ratio(pruned, PairedSchedule(rounds=15 if b == 1 else 7, calls_per_round=3 if b == 1 else 2)) for b, t in timers.items()}
        mr = macs / dense_macs
        rows.append((name, mr, lat[1].ratio, (1 / lat[1].ratio) / (1 / mr), lat[32].ratio, (1 / lat[32].ratio) / (1 / mr)))
    return (
        "## Realised speed-up vs MAC reduction (paired ratios to dense)\n\n"
        "`efficiency` = realised speed-up / MAC speed-up (1.0 = latency falls as fast as MACs).\n\n"
        + table(["policy", "MAC ratio", "latency ratio b1", "efficiency b1", "latency ratio b32", "efficiency b32"], rows)
        + "\n"
    )


def cost_section(evaluations) -> tuple[str, dict]:
    keys = ["prune", "accuracy", "latency", "other", "total"]
    means = {k: statistics.mean(m.seconds[k] for _, m in evaluations) for k in keys}
    medians = {k: statistics.median(m.seconds[k] for _, m in evaluations) for k in keys}
    text = (
        "## Cost of one evaluation (prune + BN recalibration + proxy accuracy + paired latency)\n\n"
        + table(["step", "mean s", "median s"], [(k, means[k], medians[k]) for k in keys])
        + f"\n=> {60 / means['total']:.1f} evaluations per minute.\n\n"
    )
    return text, means


def spearman_section(cfg, ev, baseline, evaluations, n: int, ft_samples: int) -> tuple[str, dict]:
    data = baseline.data
    sub = copy.copy(data)
    sub.train = Split(data.train.x[:ft_samples], data.train.y[:ft_samples])
    rng = np.random.default_rng(1)
    picks = sorted(rng.choice(len(evaluations), size=min(n, len(evaluations)), replace=False).tolist())
    proxies, tuned = [], []
    for i in picks:
        pol, m = evaluations[i]
        pruned = apply_best(cfg, baseline, pol, evaluator=ev)  # as `autoprune run` delivers it: BN re-estimated
        finetune(pruned, sub, FinetuneSettings(epochs=1, lr=0.01, augment=False), progress=False)
        proxies.append(m.accuracy)
        tuned.append(accuracy(pruned, data.val))
    rho = float(spearmanr(proxies, tuned).statistic)
    rows = [(i, proxies[k], tuned[k]) for k, i in enumerate(picks)]
    text = (
        f"## Proxy accuracy vs accuracy after one epoch of fine-tuning ({len(picks)} policies, {ft_samples} training samples)\n\n"
        + table(["policy #", "proxy (val subset, adaptive BN)", "after 1 epoch (full val)"], rows)
        + f"\nSpearman rho = **{rho:.3f}**\n\n"
    )
    return text, {"spearman": rho}


def main() -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policies", type=int, default=50)
    ap.add_argument("--noise-policies", type=int, default=6)
    ap.add_argument("--noise-repeats", type=int, default=8)
    ap.add_argument("--spearman", type=int, default=10)
    ap.add_argument("--ft-samples", type=int, default=54000)
    ap.add_argument("--out", default="measure.md")
    args = ap.parse_args()
    torch.set_num_threads(2)
    cfg = parse_config({"name": "bench-measure", "model": {"name": "resnet20"}, "data": {"name": "fashion_mnist"}, "budget": {"target": 0.5}})
    baseline = load_baseline(cfg, progress=False)
    t0 = time.perf_counter()
    ev = build_evaluator(cfg, baseline)
    setup_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    policies = [random_policy(ev, rng) for _ in range(args.policies)]
    evaluations = [(p, ev.evaluate(p)) for p in policies]
    out = header("Measurement benchmark: ResNet-20 / Fashion-MNIST", threads=ev.latency.threads)
    out += (
        f"Dense: {ev.dense_ms:.3f} ms at batch {ev.latency.batch_size}, val accuracy {ev.dense_accuracy:.4f}; "
        f"evaluator set-up (graph, table calibration) {setup_s:.1f} s. {args.policies} random policies "
        f"(ratios U[0, {ev.max_ratio}], each droppable block dropped with p=0.25).\n\n"
    )
    summary = {}
    text, s = cost_section(evaluations)
    out += text
    summary.update(s)
    text, s = table_section(ev, evaluations)
    out += text
    summary.update(s)
    text, s = noise_section(ev, policies[: args.noise_policies], args.noise_repeats)
    out += text
    summary.update(s)
    out += speedup_section(ev, baseline)
    if args.spearman > 1:
        text, s = spearman_section(cfg, ev, baseline, evaluations, args.spearman, args.ft_samples)
        out += text
        summary.update(s)
    goals = [
        Goal("one evaluation <= 2 s", f"{summary['total']:.2f} s", summary["total"] <= 2.0),
        Goal("paired latency-ratio CV <= 3%", f"{100 * summary['paired_cv']:.1f}% (unpaired {100 * summary['unpaired_cv']:.1f}%)", summary["paired_cv"] <= 0.03),
        Goal("lookup-table median error <= 5%", f"{100 * summary['median_err']:.1f}% (p90 {100 * summary['p90_err']:.1f}%)", summary["median_err"] <= 0.05),
    ]
    if "spearman" in summary:
        goals.append(Goal("proxy vs fine-tuned Spearman >= 0.7", f"{summary['spearman']:.3f}", summary["spearman"] >= 0.7))
    out += goals_report(goals)
    path = write(args.out, out)
    print(out)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
