"""End-to-end benchmark: searched policy vs uniform after the same fine-tune budget, on the test split.

ResNet-20 / Fashion-MNIST, target 50% of dense batch-1 latency. Optuna-TPE searches on the
validation proxy; uniform (channel-only, bisection on measured latency) is the classical
baseline. Both are applied as ``autoprune run`` applies them (``apply_best``: BN re-estimated),
fine-tuned for the same epochs, with and without distillation, then evaluated on the test split
(never seen by the search) and timed paired against dense by the pipeline's final measurement
(``measure_final``); the searched policy's int8 artifact is kept or not by ``decide_int8``.
Writes ``experiments/results/end_to_end.md``.

    python -m experiments.bench.end_to_end [--episodes 100] [--epochs 3] [--no-onnx]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from autoprune.app.experiment import build_evaluator, load_baseline
from autoprune.app.pipeline import apply_best, decide_int8, measure_final
from autoprune.config.loading import parse_config
from autoprune.objective.proxy import split_metrics
from autoprune.search import get_searcher
from autoprune.training.finetune import FinetuneSettings, finetune

from ._common import Goal, goals_report, header, table, write


def onnx_rows(cfg, baseline, model: torch.nn.Module, accuracy: float) -> tuple[list[tuple], str]:
    """fp32 and static int8 on ONNX Runtime: latency ratio to dense fp32 (paired, one runtime), test accuracy, and the int8 decision.

    The int8 artifact and whether it is kept come from the pipeline (``autoprune.app.pipeline.decide_int8``:
    static QDQ calibrated on 8 training batches, kept only if faster than fp32 and within
    ``export.int8_tolerance``); each file is then timed against the dense fp32 file by
    ``compare_onnx_files`` (ONNX Runtime's serving settings, interleaved blocks).

    Returns:
        The table rows and the pipeline's one-line int8 decision.
    """
    try:
        from autoprune.formats.onnx import export_onnx, onnx_predictions
        from autoprune.measure.compare import compare_onnx_files
        from autoprune.measure.schedule import PairedSchedule
    except ImportError:
        return [], ""
    tmp = Path(tempfile.mkdtemp())
    data, threads = baseline.data, cfg.latency.threads
    x1 = data.example_input(1)
    export_onnx(baseline.model, x1, tmp / "dense.onnx")
    export_onnx(model, x1, tmp / "pruned.onnx")
    int8 = decide_int8(cfg, baseline, tmp / "pruned.onnx", accuracy, tmp, keep_rejected=True)
    files = {"dense": tmp / "dense.onnx", "pruned": tmp / "pruned.onnx", "pruned int8 (static QDQ)": Path(int8["path"])}
    rows = []
    for name, path in files.items():
        if name.endswith("(static QDQ)"):
            acc = int8["test_accuracy"]
        else:
            logits = onnx_predictions(path, data.test.x, threads=threads)
            acc = float((torch.from_numpy(logits).argmax(1) == data.test.y).float().mean())
        lat = compare_onnx_files(files["dense"], path, x1, threads=threads, schedule=PairedSchedule(rounds=30))
        rows.append((f"ONNX Runtime {name}", acc, lat.ratio, f"[{lat.ci_low:.3f}, {lat.ci_high:.3f}]", path.stat().st_size / 1024))
    return rows, int8["reason"]


def main() -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--epochs", type=float, default=3)
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--no-onnx", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    cfg = parse_config({"name": "bench-e2e", "model": {"name": "resnet20"}, "data": {"name": "fashion_mnist"}, "budget": {"target": args.target},
                        "latency": {"batch_size": 1, "threads": 2}})
    baseline = load_baseline(cfg, progress=False)
    ev = build_evaluator(cfg, baseline)
    t0 = time.perf_counter()
    searched = get_searcher("optuna", {"sampler": "tpe", "n_startup_trials": 15}, progress=False).search(ev, args.episodes, seed=0)
    search_s = time.perf_counter() - t0
    uniform = get_searcher("uniform", {}, progress=False).search(ev, 10, seed=0)
    policies = {"searched (optuna-tpe)": searched.best, "uniform": uniform.best}
    dense = baseline.model
    data = baseline.data
    dense_test = split_metrics(dense, data.test)["accuracy"]
    rows, results = [], {}
    last = None
    for name, best in policies.items():
        for distill in (False, True):
            pruned = apply_best(cfg, baseline, best.policy, evaluator=ev)  # as `autoprune run` delivers it: BN re-estimated
            t1 = time.perf_counter()
            finetune(pruned, data, FinetuneSettings(epochs=args.epochs, lr=0.01, distill=distill), teacher=dense if distill else None, progress=False)
            ft_s = time.perf_counter() - t1
            dense_r, pruned_r = measure_final(pruned, dense, baseline, cfg)  # test accuracy, paired latency (5 + 30 rounds), MACs
            acc, ratio = pruned_r.test_accuracy, pruned_r.latency_ms / dense_r.latency_ms
            ci = [ms / dense_r.latency_ms for ms in pruned_r.latency_ci_ms]
            mac_red = dense_r.macs / pruned_r.macs
            results[(name, distill)] = (acc, ratio, mac_red)
            rows.append(
                (name, "yes" if distill else "no", best.metrics.accuracy, acc, 100 * (acc - dense_test), ratio,
                 f"[{ci[0]:.3f}, {ci[1]:.3f}]", 1 / mac_red, (1 / ratio) / mac_red, len(best.policy.drop), ft_s)
            )
            if name.startswith("searched") and distill:
                last = (pruned, acc)
    out = header("End-to-end benchmark: ResNet-20 / Fashion-MNIST", threads=2)
    out += (
        f"Target {args.target:.0%} of dense batch-1 latency. Search: Optuna-TPE, {args.episodes} episodes "
        f"({search_s:.0f} s, validation proxy only). Fine-tune: {args.epochs} epochs SGD lr 0.01 cosine, "
        f"distillation T=4, alpha=0.7. Dense test accuracy **{dense_test:.4f}**. Latency: paired ratio to dense, "
        "5 warm-up and 30 measured interleaved rounds, batch 1, 2 threads (the pipeline's final measurement).\n\n"
    )
    out += table(
        ["policy", "distill", "proxy acc (val)", "test acc", "vs dense (pts)", "latency ratio", "95% CI", "MAC ratio", "speed-up / MAC reduction", "blocks dropped", "fine-tune s"],
        rows,
    )
    if not args.no_onnx and last is not None:
        orows, decision = onnx_rows(cfg, baseline, *last)
        if orows:
            out += "\n## Prune -> fine-tune -> quantize -> export (searched policy with distillation)\n\n"
            out += table(["model", "test acc", "latency ratio to dense ORT fp32 (paired)", "95% CI", "file KiB"], orows)
            out += f"\nThe pipeline's int8 decision: {decision}.\n"
    best_s = max(results[("searched (optuna-tpe)", d)][0] for d in (False, True))
    best_u = max(results[("uniform", d)][0] for d in (False, True))
    eff = [(1 / r[1]) / r[2] for r in results.values()]
    out += "\n" + goals_report([
        Goal("searched >= uniform + 1.0 point (best of with/without distillation)", f"{100 * (best_s - best_u):+.2f} points", best_s - best_u >= 0.01),
        Goal("searched within 1.0 point of dense", f"{100 * (best_s - dense_test):+.2f} points", dense_test - best_s <= 0.01),
        Goal("realised speed-up >= 0.8 x MAC reduction", f"min ratio {min(eff):.2f}", min(eff) >= 0.8),
    ])
    write("end_to_end.md", out)
    print(out)


if __name__ == "__main__":
    main()
