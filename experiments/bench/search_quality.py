"""Search quality: does each fidelity level rank policies as the user's fine-tuned test accuracy does, and does the search win?

One cell = (model, seed), on the demo's setting (Fashion-MNIST, batch 1, ONNX Runtime, target
0.5 of dense latency). Each cell:

1. runs the five rows as ``autoprune search`` runs them (:func:`autoprune.app.experiment.run_search`:
   baseline seeding and multi-fidelity selection as configured): PPO, Optuna-TPE, and the baseline
   searchers ``uniform`` (SIMD-rounded through ``pruning.round_to: auto``), ``global``
   (Torch-Pruning global magnitude) and ``layer_drop``;
2. gathers at least ``--policies`` distinct policies at the target: the rows' choices, the predicted
   baselines (:func:`autoprune.search.pool.baseline_pool`), the next-best feasible candidates of
   the PPO and Optuna searches, and random policies pushed into the predicted budget;
3. scores every policy at each fidelity level: the search's proxy (adaptive-BN accuracy on the
   validation subset), and a short fine-tune with distillation of ``--steps`` optimiser steps on the
   validation split (:func:`autoprune.training.screen.short_finetune_accuracy`), each with its cost
   in seconds per policy; then the standard recovery (``--epochs`` epochs, distillation on, as
   ``autoprune run`` fine-tunes) and accuracy on the **test** split;
4. computes Kendall's tau (tau-b) between each level and the test accuracy over the policies;
5. re-measures the rows' delivered latency ratios in a fresh process
   (:func:`autoprune.measure.fresh.remeasure_in_fresh_process`, paired against dense).

One JSON per cell (command, date, commit, versions, load average) goes to
``experiments/results/search_quality_rows/``; ``search_quality.md`` is rebuilt from all of them.
Sentence encoders (MiniLM) are not covered: their recovery is embedding distillation, which has
no short fine-tune level yet.

    python -m experiments.bench.search_quality [--models resnet20 mobilenetv2] [--seeds 0 1 2]
    python -m experiments.bench.search_quality --quick         # ResNet-20 on digits, MAC budget, one seed, tiny budgets: checks the path
    python -m experiments.bench.search_quality --section       # only rebuild the markdown from the JSONs
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._common import LIBS, Goal, _version, command, git_commit, goals_report, table, write, zoo_model

RESULTS = Path(__file__).resolve().parents[1] / "results"
CELLS = RESULTS / "search_quality_rows"
DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
#: Row name -> searcher; the first two are the searched rows.
ROWS = {"PPO": "ppo", "Optuna-TPE": "optuna", "uniform (SIMD-rounded)": "uniform", "global (Torch-Pruning)": "global", "layer_drop": "layer_drop"}
SEARCHED = ("PPO", "Optuna-TPE")


def kendall_tau(x: list[float], y: list[float]) -> float:
    """Kendall's tau-b of two equally long score lists (NaN with fewer than 3 pairs or a constant list)."""
    from scipy.stats import kendalltau

    if len(x) < 3:
        return float("nan")
    return float(kendalltau(x, y).statistic)


def _random_policies(ev: Any, count: int, seed: int) -> list[Any]:
    from autoprune.search.baselines import make_feasible

    rng = np.random.default_rng(1000 + seed)
    out = []
    for _ in range(count):
        ratios = {u: float(rng.uniform(0.0, ev.max_ratio)) for u in ev.unit_names}
        drop = [b for b in ev.block_names if rng.random() < 0.2]
        out.append(make_feasible(ev, ratios, drop, rng))
    return out


def run_cell(model: str, data: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Rows, policy pool, fidelity levels, tau and fresh-process ratios of one (model, seed); returns (and writes) its JSON."""
    from autoprune.app.experiment import load_baseline, run_search
    from autoprune.app.pipeline import apply_best
    from autoprune.config.loading import load_config
    from autoprune.config.settings import finetune_settings, selection_settings
    from autoprune.formats.pruned import save_pruned
    from autoprune.measure.fresh import FRESH_PROCESSES, remeasure_in_fresh_process
    from autoprune.objective.proxy import split_metrics
    from autoprune.search.pool import baseline_pool
    from autoprune.training.finetune import finetune
    from autoprune.training.screen import short_finetune_accuracy

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="ap-quality-"))
    over = [f"model.name={model}", f"data.name={data}", f"seed={seed}", f"search.episodes={args.episodes}", f"budget.target={args.target}",
            f"latency.threads={args.threads}", "finetune.distill=true", f"finetune.epochs={max(1, round(args.epochs))}",  # the config takes whole epochs; recovery below uses --epochs
            f"search.finalist_steps={args.steps[0]}",
            *args.set]
    cfg = load_config(DEMO, over + [f"output_dir={tmp / 'base'}"])
    baseline = load_baseline(cfg, progress=False)
    dense, bundle = baseline.model.eval(), baseline.data
    zoo = zoo_model(cfg, baseline)
    save = {"model_name": zoo.name, "in_channels": zoo.in_channels, "num_classes": zoo.num_classes, "input_size": zoo.input_size}
    save_pruned(tmp / "dense.pt", dense, **save)
    recovery = dataclasses.replace(finetune_settings(cfg), epochs=args.epochs, distill=True)

    rows, runs = [], {}
    for name, searcher in ROWS.items():
        row_cfg = load_config(DEMO, over + [f"search.searcher={searcher}", f"output_dir={tmp / searcher}"])
        t0 = time.perf_counter()
        runs[name] = run = run_search(row_cfg, progress=False, baseline=baseline)
        rows.append({"row": name, "searcher": searcher, "search_s": time.perf_counter() - t0, "episodes": len(run.result.history),
                     "policy": run.result.best.policy.to_dict(), "search_ratio": run.result.best.metrics.value,
                     "proxy": run.result.best.metrics.accuracy, "selection": run.result.extras.get("selection")})
    ev = runs["Optuna-TPE"].evaluator

    candidates: dict[tuple, tuple[str, Any]] = {}

    def add(source: str, policy: Any) -> None:
        candidates.setdefault(policy.key(), (source, policy))

    for name, run in runs.items():
        add(name, run.result.best.policy)
    pooled = seed in args.tau_seeds
    for name, policy in (baseline_pool(ev) if pooled else {}).items():
        add(f"{name} (predicted)", policy)
    for name in SEARCHED if pooled else ():
        history = sorted((e for e in runs[name].result.history if e.metrics.feasible and not e.metrics.failed),
                         key=lambda e: e.metrics.reward, reverse=True)
        for e in history[: args.per_search]:
            add(f"{name} candidate", e.policy)
    missing = max(args.random, args.policies - len(candidates)) if pooled else 0
    for policy in _random_policies(ev, missing, seed):
        add("random", policy)

    policies = []
    for key, (source, policy) in candidates.items():
        m = ev.evaluate(policy)
        if m.failed:
            continue
        entry = {"source": source, "policy": policy.to_dict(), "ratio": m.value, "proxy": m.accuracy, "proxy_s": m.seconds.get("total", float("nan"))}
        for steps in args.steps:
            t0 = time.perf_counter()
            entry[f"short_{steps}"] = short_finetune_accuracy(ev, policy, finetune_settings(cfg), steps)
            entry[f"short_{steps}_s"] = time.perf_counter() - t0
        pruned = apply_best(cfg, baseline, policy, evaluator=ev)
        t0 = time.perf_counter()
        finetune(pruned, bundle, recovery, teacher=dense, progress=False)
        entry["recovery_s"] = time.perf_counter() - t0
        entry["test"] = split_metrics(pruned.eval(), bundle.test)["accuracy"]
        for row in rows:
            if _key(row["policy"]) == key and "test" not in row:
                row["test"] = entry["test"]
                row["model_file"] = str(tmp / f"{row['searcher']}.pt")
                save_pruned(row["model_file"], pruned, **save)
        policies.append(entry)

    test = [p["test"] for p in policies]
    levels = {"proxy": "proxy"} | {f"short fine-tune, {s} steps": f"short_{s}" for s in args.steps}
    tau = {label: kendall_tau([p[k] for p in policies], test) if pooled else None for label, k in levels.items()}
    cost = {label: statistics.mean(p[f"{k}_s"] for p in policies) for label, k in levels.items()}

    timed = [r for r in rows if "model_file" in r]  # a row whose policy failed to evaluate has no model
    fresh = remeasure_in_fresh_process(tmp / "dense.pt", [r["model_file"] for r in timed], dense_shape(cfg, bundle), backend=cfg.latency.backend,
                                       threads=args.threads, backend_options=dict(cfg.latency.backend_options or {}), rounds=args.rounds,
                                       processes=FRESH_PROCESSES)
    for row, m in zip(timed, fresh.ratios):
        row.update({"fresh_ratio": m.ratio, "fresh_ci": [m.ci_low, m.ci_high]})
    chosen_level = f"short fine-tune, {args.steps[0]} steps" if selection_settings(cfg).finalists > 1 else "proxy"
    result = {
        "model": model, "data": data, "seed": seed, "target": args.target, "metric": cfg.budget.metric, "episodes": args.episodes, "recovery_epochs": args.epochs,
        "backend": cfg.latency.backend, "threads": args.threads, "dense_test": split_metrics(dense, bundle.test)["accuracy"],
        "rows": rows, "policies": policies, "tau": tau, "seconds_per_policy": cost, "selection_level": chosen_level,
        "command": command(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": git_commit(),
        "versions": {n: _version(n) for n in (*LIBS, "onnxruntime")}, "load_average": open("/proc/loadavg").read().split()[:3],
        "quick": args.quick,
    }
    CELLS.mkdir(parents=True, exist_ok=True)
    (CELLS / f"{model}-{data}-s{seed}{'-quick' if args.quick else ''}.json").write_text(json.dumps(result, indent=1))
    return result


def _key(d: dict) -> tuple:
    """:meth:`Policy.key` of a policy's JSON form."""
    from autoprune.graph.policy import Policy

    return Policy.from_dict(d).key()


def dense_shape(cfg: Any, bundle: Any) -> tuple[int, ...]:
    """The latency input's shape: ``(latency.batch_size, C, H, W)``."""
    return tuple(bundle.example_input(cfg.latency.batch_size).shape)


def _mean_sd(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * statistics.mean(values):.{digits}f} ± {scale * sd:.{digits}f}"


def section(cells: list[dict[str, Any]]) -> str:
    """The markdown of every setting (model, data), its rows over seeds, tau per level, and the goals."""
    text = ("# Search quality: fidelity levels vs delivered accuracy, and the searched rows vs the baselines\n\n"
            "Per setting: the rows as `autoprune search` runs them (baseline seeding, multi-fidelity selection), each policy "
            "recovered by the same fine-tune (distillation on) and scored on the test split, the delivered latency ratio "
            "re-measured in a fresh process (paired against dense). Kendall's tau-b is over the setting's policy pool "
            "(rows, predicted baselines, the searches' next candidates, random policies pushed into the budget), mean ± sd over seeds.\n\n")
    goals: list[Goal] = []
    if any(not c["quick"] for c in cells):  # a real run replaces the --quick check
        cells = [c for c in cells if not c["quick"]]
    for setting in sorted({(c["model"], c["data"], c["quick"]) for c in cells}):
        group = [c for c in cells if (c["model"], c["data"], c["quick"]) == setting]
        first = group[0]
        text += (f"## {setting[0]} on {setting[1]}{' (--quick: checks the path, not a result)' if setting[2] else ''}\n\n"
                 f"- command: `{first['command']}`; commit {first['commit']}; dates {', '.join(sorted({c['date'] for c in group}))}; "
                 f"load average {', '.join(' '.join(c['load_average']) for c in group)}\n"
                 f"- seeds {sorted(c['seed'] for c in group)}; target {first['target']} of dense {first['metric']} (latency on "
                 f"{first['backend']}, batch 1, "
                 f"{first['threads']} threads); {first['episodes']} episodes per search; recovery {first['recovery_epochs']} epoch(s) "
                 f"with distillation; policies scored per seed {', '.join(str(c['seed']) + ': ' + str(len(c['policies'])) for c in group)} (tau over the pooled seeds); dense test "
                 f"{first['dense_test']:.4f}; final choice on: {first['selection_level']}\n\n")
        levels = list(first["tau"])
        text += table(["fidelity level", "Kendall tau vs test (mean ± sd)", "seconds per policy"],
                      [(lv, _mean_sd([c["tau"][lv] for c in group if c["tau"][lv] is not None]),
                        _mean_sd([c["seconds_per_policy"][lv] for c in group], digits=1))
                       for lv in levels]) + "\n"
        body, acc = [], {}
        for name in ROWS:
            rs = [next(r for r in c["rows"] if r["row"] == name) for c in group]
            acc[name] = [r["test"] for r in rs if "test" in r]
            body.append((name, _mean_sd([r["fresh_ratio"] for r in rs if "fresh_ratio" in r], digits=3), _mean_sd([r["search_ratio"] for r in rs], digits=3),
                         _mean_sd(acc[name], 100), _mean_sd([r["proxy"] for r in rs], digits=3), _mean_sd([r["search_s"] for r in rs], digits=0),
                         statistics.mean(r["episodes"] for r in rs)))
        text += table(["row", "delivered ratio (fresh process)", "ratio in search", "test acc % (mean ± sd)", "proxy", "search s", "episodes"],
                      body) + "\n"
        if setting[2]:
            continue
        label = f"{setting[0]}"
        target = first["target"]
        best_base = max(statistics.mean(acc[n]) for n in ROWS if n not in SEARCHED and acc[n])
        for name in SEARCHED:
            fresh = [next(r for r in c["rows"] if r["row"] == name).get("fresh_ratio", float("inf")) for c in group]
            goals.append(Goal(f"{label} {name}: delivered fresh-process ratio within [0.95, 1.03] x target (every seed)",
                              ", ".join(f"{f / target:.3f}" for f in fresh), all(0.95 <= f / target <= 1.03 for f in fresh)))
            d = 100 * (statistics.mean(acc[name]) - best_base) if acc[name] else float("nan")
            goals.append(Goal(f"{label} {name}: mean test accuracy >= best baseline + 1.0 point", f"{d:+.2f} pts", d >= 1.0))
        sel = first["selection_level"]
        t = statistics.mean(c["tau"][sel] for c in group if c["tau"][sel] is not None)
        goals.append(Goal(f"{label}: Kendall tau of the level that makes the final choice ({sel}) >= 0.6", f"{t:.2f}", t >= 0.6))
    text += "MiniLM (fidelity) is not covered: an encoder's recovery is embedding distillation, with no short fine-tune level yet.\n\n"
    return text + goals_report(goals)


def main() -> None:
    from autoprune.measure.onnxruntime import own_process

    own_process()  # as `autoprune search` does: in-search ratios on ONNX Runtime's shared pool
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["resnet20", "mobilenetv2"])
    ap.add_argument("--data", default="fashion_mnist")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--episodes", type=int, default=40)
    ap.add_argument("--epochs", type=float, default=1.0, help="standard recovery: fine-tune epochs (distillation on)")
    ap.add_argument("--steps", nargs="+", type=int, default=[60, 240], help="short fine-tune levels, optimiser steps; the first is the product's")
    ap.add_argument("--policies", type=int, default=20, help="at least this many policies per cell")
    ap.add_argument("--random", type=int, default=6, help="at least this many random policies")
    ap.add_argument("--tau-seeds", nargs="*", type=int, default=[0, 1, 2],
                    help="seeds whose cell scores the whole policy pool for tau (the others score only the five rows)")
    ap.add_argument("--per-search", type=int, default=3, help="next-best feasible candidates taken from each of PPO and Optuna")
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--rounds", type=int, default=40, help="paired rounds of the fresh-process re-measure")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", nargs="*", default=[], help="more config overrides, dotted.key=value")
    ap.add_argument("--quick", action="store_true", help="ResNet-20 on digits (3 training epochs, MAC budget), one seed, tiny budgets")
    ap.add_argument("--section", action="store_true", help="only rebuild search_quality.md from the JSONs")
    args = ap.parse_args()
    if args.quick:
        args.models, args.data, args.seeds, args.episodes, args.epochs, args.steps = ["resnet20"], "digits", [0], 8, 0.5, [5, 10]
        args.policies, args.random, args.per_search, args.rounds = 20, 4, 2, 8
        # a MAC budget: exact, so a tiny model on 8x8 images always reaches it (the fresh re-measure still times latency)
        args.set = [*args.set, "train.epochs=3", "budget.metric=macs", "latency.rounds=5", "proxy.val_samples=200"]
    if not args.section:
        for model in args.models:
            for seed in args.seeds:
                run_cell(model, args.data, seed, args)
    cells = [json.loads(f.read_text()) for f in sorted(CELLS.glob("*.json"))]
    path = write("search_quality.md", section(cells))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
