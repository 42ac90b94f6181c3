"""Section 2 of the scale benchmark: the per-trial cost of the study storage (memory, SQLite, PostgreSQL)."""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import sqlalchemy
import torch

from autoprune.app.experiment import build_evaluator, load_baseline
from autoprune.config.loading import load_config
from autoprune.graph.policy import Policy
from autoprune.objective.evaluator import Metrics
from autoprune.search import get_searcher
from tests.helpers.postgres import PostgresServer

from .._common import table
from .studies import ASYNC_PG, CONFIG

# --------------------------------------------------------------------------- 2. storage overhead


def storage_section(pg: PostgresServer, tmp: Path, args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    torch.set_num_threads(1)
    cfg = load_config(CONFIG, ["latency.threads=1"])
    baseline = load_baseline(cfg, progress=False)
    ev = build_evaluator(cfg, baseline)
    constant = ev.evaluate(Policy.uniform(ev.unit_names, 0.5))
    constant = Metrics.from_dict({**constant.as_dict(), **{k: None for k in constant.as_dict() if k.startswith("seconds_")}})

    def cheap():
        c = ev.with_budget(ev.budget)
        c._evaluate_uncached = lambda policy: constant  # a trivial objective: what is left is sampler + storage + loop
        return c

    commits = [0]
    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "commit", lambda conn: commits.__setitem__(0, commits[0] + 1))
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    kinds = [("trivial objective", args.cheap_trials, args.storage_reps), ("real evaluator", args.real_trials, args.storage_reps)]
    order = ["in-memory", "sqlite", "postgresql", ASYNC_PG]
    for kind, n, reps in kinds:
        for rep in range(reps):
            for name in (order if rep % 2 == 0 else order[::-1]):
                if name == "in-memory":
                    url = None
                elif name == "sqlite":
                    url = f"sqlite:///{tmp / f'storage-{kind[:4]}-{rep}.db'}"
                else:
                    url = pg.create_database(f"storage_{kind[:4]}_{rep}")
                    if name == ASYNC_PG:
                        url += "?options=-c%20synchronous_commit%3Doff"  # libpq option for this client's sessions
                evaluator = cheap() if kind.startswith("trivial") else ev.with_budget(ev.budget)
                stamps: list[tuple[float, int]] = []
                searcher = get_searcher("optuna", {"sampler": "tpe", "n_startup_trials": 20, "storage": url, "study_name": "s"},
                                        progress=False, callback=lambda e, stamps=stamps: stamps.append((time.perf_counter(), commits[0])))
                searcher.confirm_top = 0
                print(f"[storage] {kind}, {name}, rep {rep + 1}: {n} trials ...", flush=True)
                result = searcher.search(evaluator, n, seed=0)
                # Trial 1 -> n only: the first trial also pays for creating the study (and the tables).
                times = [t for t, _ in stamps]
                gaps = [b - a for a, b in zip(times, times[1:])]
                evals = [e.metrics.seconds.get("total", 0.0) for e in result.history[1:]]
                q = max(1, len(gaps) // 4)
                results.setdefault((kind, name), []).append({
                    "ms": 1000 * statistics.mean(gaps), "eval_ms": 1000 * statistics.mean(evals),
                    "overhead_ms": 1000 * (statistics.mean(gaps) - statistics.mean(evals)),
                    "commits": (stamps[-1][1] - stamps[0][1]) / len(gaps),
                    "first_ms": 1000 * statistics.mean(gaps[:q]), "last_ms": 1000 * statistics.mean(gaps[-q:]),
                })
    rows, summary = [], {}
    for kind, n, reps in kinds:
        base = None
        for name in order:
            rs = results[(kind, name)]
            m = {k: statistics.mean(r[k] for r in rs) for k in rs[0]}
            base = m["overhead_ms"] if base is None else base
            summary[(kind, name)] = m
            rows.append((kind, name, n, reps, f"{m['ms']:.1f}", f"{m['eval_ms']:.1f}", f"{m['overhead_ms']:.1f}",
                         f"{m['overhead_ms'] - base:+.1f}", f"{m['commits']:.0f}", f"{m['first_ms']:.1f} / {m['last_ms']:.1f}"))
    text = (
        "## 2. Storage overhead per trial\n\n"
        "The same TPE search (20 random start-up trials, seed 0) with `storage: null` (in memory), an SQLite file and "
        "a PostgreSQL database (durability defaults: fsync and synchronous_commit on), in this process with 1 thread. "
        "The *trivial objective* returns a constant result without pruning anything, so a trial costs only the "
        "sampler, the storage and autoprune's loop (study lock, stale-trial check, counting, the metrics attribute and the "
        "budget constraint of each trial, heartbeats on RDB storages). With the *real evaluator* the policies are the same in "
        "every storage (the same seed; all trials are start-up trials when n <= 20) and the overhead is the trial's "
        "wall time minus the time inside the evaluator. `vs memory` = overhead minus the in-memory overhead = the "
        "storage's own cost (ms/trial = time between consecutive trials, the first trial excluded: it creates the "
        "study). `commits/trial` = database transactions committed per trial (SQLAlchemy). `first / last quarter` = "
        "mean wall time per trial in the first and last quarter of the "
        "search (the loop reads the study every trial, so its cost grows with the number of trials). Repetitions "
        "alternate the storage order.\n\n"
        + table(["objective", "storage", "trials", "reps", "ms/trial", "in evaluator", "overhead", "vs memory", "commits/trial",
                 "first / last quarter"], rows)
        + "\n"
        + f"ResNet-20 has {len(ev.unit_names)} prunable units and {len(ev.block_names)} droppable blocks, so a trial "
        f"has {len(ev.unit_names) + len(ev.block_names)} parameters; Optuna writes each suggested parameter, user "
        "attribute and the constraint in its own transaction, and the loop reads the study's trials several times per "
        "trial. `" + ASYNC_PG + "` is the same server with `synchronous_commit=off` for the study's sessions "
        "(a crash of the database server may lose the last few hundred milliseconds of commits, never corrupts): "
        "what is left of the PostgreSQL cost is round trips and ORM work, not disk flushes.\n\n"
    )
    return text, summary
