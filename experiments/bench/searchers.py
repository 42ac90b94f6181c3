"""Search benchmark: every searcher on the same objective, side by side.

ResNet-20 / Fashion-MNIST (committed baseline), target 50% of dense measured latency.
Each (searcher, batch size, seed) cell is one part: its row is appended to
``experiments/results/searchers.jsonl`` as soon as it finishes, so an interrupted
benchmark loses nothing and a rerun skips finished cells. ``searchers.md`` and
``searchers_curves.png`` are rebuilt from all rows after every part.

    python -m experiments.bench.searchers [--episodes 150] [--seeds 3] [--batch-sizes 1,32]
        [--searchers uniform,random,optuna,ppo,ddpg,sensitivity] [--mac-row] [--target 0.5]

The returned policy's latency is re-measured in a fresh process, paired against dense.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from ._common import RESULTS, Goal, goals_report, header, table, write, zoo_model

ROWS = RESULTS / "searchers.jsonl"


SEARCH_SETTINGS = {"optuna": lambda episodes: {"sampler": "tpe", "storage": None, "params": {"storage": None, "n_startup_trials": max(5, episodes // 8)}}}


def make_config(searcher: str, batch: int, seed: int, episodes: int, target: float, metric: str = "latency"):
    from autoprune.config.loading import parse_config

    search: dict = {"searcher": searcher, "episodes": episodes}
    # the row's own settings: a study without storage and TPE's start-up sized to the budget
    search.update(SEARCH_SETTINGS.get(searcher, lambda episodes: {})(episodes))
    return parse_config(
        {
            "name": f"bench-{searcher}-b{batch}-s{seed}",
            "seed": seed,
            "output_dir": f"runs/bench/{searcher}-{metric}-b{batch}-s{seed}",
            "model": {"name": "resnet20"},
            "data": {"name": "fashion_mnist"},
            "budget": {"metric": metric, "target": target},
            "latency": {"batch_size": batch, "threads": 2},
            "search": search,
        }
    )


def remeasure(cfg, baseline, run, batch: int) -> dict:
    """The best policy as the pipeline delivers it (``apply_best``), timed paired against dense in a fresh process.

    5 warm-up and 30 measured rounds on the search's latency backend, at ``batch``
    (:func:`autoprune.measure.fresh.remeasure_in_fresh_process`).
    """
    from autoprune.app.pipeline import apply_best
    from autoprune.measure.fresh import remeasure_in_fresh_process

    lc = cfg.latency
    pruned = apply_best(cfg, baseline, run.result.best.policy, evaluator=run.evaluator)
    fresh = remeasure_in_fresh_process(baseline.model, [pruned], baseline.data.example_input(batch), backend=lc.backend, threads=lc.threads,
                                       backend_options=lc.backend_options, rounds=30, zoo=zoo_model(cfg, baseline))
    r = fresh.ratios[0]
    return {"ratio": r.ratio, "lo": r.ci_low, "hi": r.ci_high}


def run_cell(searcher: str, batch: int, seed: int, episodes: int, target: float, metric: str) -> dict:
    from autoprune.app.experiment import load_baseline, run_search

    cfg = make_config(searcher, batch, seed, episodes, target, metric)
    baseline = load_baseline(cfg, progress=False)
    t0 = time.perf_counter()
    run = run_search(cfg, progress=False, baseline=baseline)
    wall = time.perf_counter() - t0
    res, ev = run.result, run.evaluator
    best = res.best
    eval_s = sum(e.metrics.seconds.get("total", 0.0) for e in res.history if not e.cached)
    fresh = remeasure(cfg, baseline, run, batch)
    return {
        "searcher": searcher,
        "metric": metric,
        "batch": batch,
        "seed": seed,
        "episodes": res.episodes,
        "wall_s": wall,
        "search_s": res.seconds,
        "eval_s": eval_s,
        "episodes_per_min": 60 * res.episodes / res.seconds,
        "best_accuracy": best.metrics.accuracy if best else float("nan"),
        "best_feasible": bool(best and best.metrics.feasible),
        "best_latency_ratio": best.metrics.latency_ratio if best else float("nan"),
        "best_macs_ratio": best.metrics.macs_ratio if best else float("nan"),
        "dropped": list(best.policy.drop) if best else [],
        "fresh_latency_ratio": fresh["ratio"],
        "fresh_ci": [fresh["lo"], fresh["hi"]],
        "target": ev.target,
        "dense_accuracy": ev.dense_accuracy,
        "curve": [e.metrics.reward if not e.metrics.failed else None for e in res.history],
        "feasible_curve": [bool(e.metrics.feasible) for e in res.history],
    }


def load_rows() -> list[dict]:
    if not ROWS.exists():
        return []
    return [json.loads(line) for line in ROWS.read_text().splitlines() if line.strip()]


def report(target: float) -> None:
    rows = load_rows()
    if not rows:
        return
    text = header("Searcher benchmark: ResNet-20 / Fashion-MNIST", threads=2)
    text += (
        f"Target: {target:.0%} of dense measured latency (paired ratio). Best = highest reward among feasible "
        "evaluations (hard reward: proxy accuracy on the validation subset, minus 2x the relative overshoot). "
        "`fresh ratio` = the returned policy's latency re-measured in a fresh process, paired against dense "
        "(30 interleaved rounds). `overhead` = share of search time not spent inside the evaluator.\n\n"
    )
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["metric"], r["batch"], r["searcher"]), []).append(r)
    table_rows = []
    for (metric, batch, searcher), rs in sorted(groups.items(), key=lambda kv: (kv[0][0] != "latency", kv[0][1], -np.mean([r["best_accuracy"] for r in kv[1]]))):
        acc = [r["best_accuracy"] for r in rs]
        fresh = [r["fresh_latency_ratio"] for r in rs]
        table_rows.append(
            (
                f"{searcher}" + (" (MAC target)" if metric == "macs" else ""),
                batch,
                len(rs),
                int(np.mean([r["episodes"] for r in rs])),
                f"{np.mean(acc):.4f} ± {np.std(acc):.4f}",
                f"{np.mean([r['best_macs_ratio'] for r in rs]):.3f}",
                f"{np.mean(fresh):.3f} (max {np.max(fresh):.3f})",
                f"{np.mean(fresh) / rs[0]['target']:.3f}" if metric == "latency" else f"{np.mean(fresh):.3f} (latency)",
                f"{np.mean([r['episodes_per_min'] for r in rs]):.1f}",
                f"{np.mean([r['wall_s'] for r in rs]):.0f}",
                f"{100 * np.mean([1 - r['eval_s'] / max(r['search_s'], 1e-9) for r in rs]):.1f}%",
                f"{np.mean([len(r['dropped']) for r in rs]):.1f}",
            )
        )
    text += table(
        ["searcher", "batch", "seeds", "episodes", "best proxy acc (mean ± sd)", "MAC ratio", "fresh latency ratio", "fresh / target", "episodes/min", "wall s", "overhead", "blocks dropped"],
        table_rows,
    )
    text += f"\nDense validation accuracy (subset): {rows[0]['dense_accuracy']:.4f}.\n\n"
    text += goals(rows)
    text += "\n![reward curves](searchers_curves.png)\n"
    write("searchers.md", text)
    plot_curves(rows)


def goals(rows: list[dict]) -> str:
    def mean_acc(s: str, batch: int = 1, metric: str = "latency") -> float:
        v = [r["best_accuracy"] for r in rows if r["searcher"] == s and r["batch"] == batch and r["metric"] == metric]
        return float(np.mean(v)) if v else float("nan")

    out = []
    u = mean_acc("uniform")
    for s in ("ppo", "optuna"):
        a = mean_acc(s)
        if not np.isnan(a) and not np.isnan(u):
            out.append(Goal(f"{s} vs uniform >= +10 points", f"{100 * (a - u):+.1f} points", a - u >= 0.10))
        for other in ("ddpg", "random"):
            o = mean_acc(other)
            if not np.isnan(a) and not np.isnan(o):
                out.append(Goal(f"{s} vs {other} >= 0 points", f"{100 * (a - o):+.1f} points", a >= o))
    rates = [r["episodes_per_min"] for r in rows if r["batch"] == 1 and r["searcher"] not in ("uniform",)]
    if rates:
        out.append(Goal("episodes/min (batch 1, mean over searchers) >= 30", f"{np.mean(rates):.1f}", np.mean(rates) >= 30))
    fresh = [r["fresh_latency_ratio"] / r["target"] for r in rows if r["metric"] == "latency"]
    if fresh:
        out.append(Goal("fresh re-measured latency / target <= 1.05", f"max {max(fresh):.3f}", max(fresh) <= 1.05))
    ppo_over = [1 - r["eval_s"] / r["search_s"] for r in rows if r["searcher"] == "ppo"]
    if ppo_over:
        out.append(Goal("env+agent overhead over the evaluator (PPO; the goal < 5% is for the env alone, this includes PPO's own training)",
                        f"{100 * np.mean(ppo_over):.1f}%", None))
    mac = [r for r in rows if r["metric"] == "macs"]
    if mac:
        lat_rows = [r for r in rows if r["metric"] == "latency" and r["searcher"] == mac[0]["searcher"] and r["batch"] == mac[0]["batch"]]
        if lat_rows:
            out.append(Goal(
                f"latency-targeted vs MAC-targeted ({mac[0]['searcher']})",
                f"proxy acc {np.mean([r['best_accuracy'] for r in lat_rows]):.4f} at fresh latency "
                f"{np.mean([r['fresh_latency_ratio'] for r in lat_rows]):.3f} vs {np.mean([r['best_accuracy'] for r in mac]):.4f} at "
                f"{np.mean([r['fresh_latency_ratio'] for r in mac]):.3f}", None))
    return goals_report(out, "## Goals (batch 1 unless noted)")


def plot_curves(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({r["batch"] for r in rows})
    fig, axes = plt.subplots(1, len(batches), figsize=(7 * len(batches), 4.5), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        for searcher in sorted({r["searcher"] for r in rows if r["batch"] == batch and r["metric"] == "latency"}):
            curves = []
            for r in rows:
                if r["searcher"] != searcher or r["batch"] != batch or r["metric"] != "latency":
                    continue
                best, out = -np.inf, []
                for v, f in zip(r["curve"], r["feasible_curve"]):
                    if v is not None and f:
                        best = max(best, v)
                    out.append(best if best > -np.inf else np.nan)
                curves.append(out)
            n = max(len(c) for c in curves)
            arr = np.array([c + [c[-1]] * (n - len(c)) for c in curves], dtype=float)
            ax.plot(np.arange(1, n + 1), np.nanmean(arr, axis=0), label=searcher)
        ax.set_title(f"best feasible reward so far, batch {batch}")
        ax.set_xlabel("episode")
        ax.set_ylabel("reward (proxy accuracy when feasible)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "searchers_curves.png", dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=150)
    ap.add_argument("--seeds", type=int, default=3, help="seeds at batch 1 (batch 32 always uses 1)")
    ap.add_argument("--batch-sizes", default="1,32")
    ap.add_argument("--searchers", default="uniform,random,optuna,ppo,ddpg,sensitivity")
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--mac-row", action="store_true", help="also run optuna with a MAC target at batch 1")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    if not args.report_only:
        done = {(r["searcher"], r["metric"], r["batch"], r["seed"]) for r in load_rows()}
        cells = []
        for batch in [int(b) for b in args.batch_sizes.split(",")]:
            for seed in range(args.seeds if batch == 1 else 1):
                cells += [(s, "latency", batch, seed) for s in args.searchers.split(",")]
        if args.mac_row:
            cells += [("optuna", "macs", 1, seed) for seed in range(args.seeds)]
        for searcher, metric, batch, seed in cells:
            if (searcher, metric, batch, seed) in done:
                continue
            print(f"== {searcher} {metric} batch {batch} seed {seed}", flush=True)
            row = run_cell(searcher, batch, seed, args.episodes, args.target, metric)
            with ROWS.open("a") as f:
                f.write(json.dumps(row) + "\n")
            report(args.target)
    report(args.target)
    print((RESULTS / "searchers.md").read_text())


if __name__ == "__main__":
    main()
