"""Section 1 of the scale benchmark: trials per minute of 1 vs 2 worker processes on PostgreSQL, in steady state."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers.postgres import PostgresServer

from .._common import Goal, goals_report, table
from .studies import CONFIG, REPO, env_for, first_overlap, group_cpu_seconds, load1, pg_trials, steady_rate

# --------------------------------------------------------------------------- 1. throughput


@dataclass
class ModeRun:
    mode: str
    round: int
    ok: bool = False
    note: str = ""
    window_s: float = 0.0
    rate: float = float("nan")
    trial_s: float = float("nan")
    trials: int = 0
    cores: float = float("nan")
    load: tuple[float, float] = (float("nan"), float("nan"))
    startup_s: float = float("nan")


MODES = {  # name: (workers, threads per worker)
    "1 worker x 1 thread": (1, 1),
    "1 worker x 2 threads": (1, 2),
    "2 workers x 1 thread": (2, 1),
}


def run_mode(pg: PostgresServer, tmp: Path, mode: str, rnd: int, window: float, start_timeout: float) -> ModeRun:
    """``autoprune search`` in its own process group; killed ``window`` seconds after all its workers run trials."""
    workers, threads = MODES[mode]
    res = ModeRun(mode, rnd)
    url = pg.create_database(f"tput_{workers}w{threads}t_{rnd}")
    study = f"tput-{workers}w{threads}t-{rnd}"
    out = tmp / study
    cmd = [sys.executable, "-m", "autoprune", "search", str(CONFIG), "--storage", url, "--study", study,
           "--workers", str(workers), "--episodes", "100000", "-s", f"latency.threads={threads}", "-s", f"seed={rnd}",
           "-s", f"output_dir={out}"]
    out.mkdir(parents=True, exist_ok=True)
    launched = time.monotonic()
    with open(out / "search.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env_for(threads), cwd=REPO, start_new_session=True)
    try:
        t0 = None
        while t0 is None:
            if proc.poll() is not None:
                res.note = f"exited with {proc.returncode} before the steady state; see {out / 'search.log'}"
                return res
            if time.monotonic() - launched > start_timeout:
                res.note = f"no steady state within {start_timeout:.0f} s of launch (start-up under contention)"
                return res
            time.sleep(0.5)
            try:
                rows = pg_trials(url, study)
            except Exception:  # noqa: BLE001 - tables not created yet
                continue
            now = dt.datetime.now()
            if workers == 1:
                t0 = min((r[2] for r in rows if r[2] is not None), default=None)
            else:
                t0 = first_overlap(rows, now)
        res.startup_s = time.monotonic() - launched - (dt.datetime.now() - t0).total_seconds()
        cpu0, m0, load0 = group_cpu_seconds(proc.pid), time.monotonic(), load1()
        time.sleep(max(0.0, window - (dt.datetime.now() - t0).total_seconds()))
        cpu1, m1, t1 = group_cpu_seconds(proc.pid), time.monotonic(), dt.datetime.now()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the search and the worker it spawned
        proc.wait()
    rows = pg_trials(url, study)
    res.rate, res.trial_s, res.trials = steady_rate(rows, t0, t1)
    res.window_s = (t1 - t0).total_seconds()
    res.cores = (cpu1 - cpu0) / (m1 - m0) if m1 > m0 else float("nan")
    res.load = (load0, load1())
    res.ok = True
    return res


def throughput_section(pg: PostgresServer, tmp: Path, args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    runs: list[ModeRun] = []
    names = list(MODES)
    for rnd in range(args.rounds):
        for mode in (names if rnd % 2 == 0 else names[::-1]):
            print(f"[throughput] round {rnd + 1}/{args.rounds}: {mode} ...", flush=True)
            r = run_mode(pg, tmp, mode, rnd, args.window, args.start_timeout)
            print(f"    {r.rate:.1f} trials/min ({r.note or 'ok'})", flush=True)
            runs.append(r)
    agg: dict[str, float] = {}
    rows = []
    for mode in names:
        ok = [r for r in runs if r.mode == mode and r.ok]
        # Pooled over rounds: fractional trials / total window time.
        agg[mode] = sum(r.rate * r.window_s for r in ok) / sum(r.window_s for r in ok) if ok else float("nan")
        for r in (r for r in runs if r.mode == mode):
            rows.append((mode, r.round + 1, f"{r.window_s:.0f}" if r.ok else "-", f"{r.rate:.1f}" if r.ok else "-",
                         f"{r.trial_s:.2f}" if r.ok else "-", r.trials, f"{r.cores:.2f}" if r.ok else "-",
                         f"{r.rate / r.cores:.1f}" if r.ok and r.cores > 0 else "-",
                         f"{r.load[0]:.1f} / {r.load[1]:.1f}" if r.ok else "-", f"{r.startup_s:.0f}" if r.ok else "-",
                         r.note or "ok"))
    one, one2, two = agg[names[0]], agg[names[1]], agg[names[2]]
    ratios = {"2w1t / 1w1t": two / one if one > 0 else float("nan"), "2w1t / 1w2t": two / one2 if one2 > 0 else float("nan")}
    # The same per core obtained: fractional trials / CPU-minutes the search got (a contention-free view).
    per_cpu = {}
    for mode in names:
        ok = [r for r in runs if r.mode == mode and r.ok and r.cores > 0]
        per_cpu[mode] = sum(r.rate * r.window_s for r in ok) / sum(r.cores * r.window_s for r in ok) if ok else float("nan")
    cores1, cores2 = (statistics.mean([r.cores for r in runs if r.mode == m and r.ok] or [float("nan")]) for m in (names[0], names[2]))
    contended = not cores2 >= 1.6
    text = (
        "## 1. Throughput: 1 vs 2 worker processes on PostgreSQL\n\n"
        f"`autoprune search {CONFIG.relative_to(REPO)} --storage postgresql://... --workers N --episodes 100000 "
        "-s latency.threads=T` (TPE, 20 random start-up trials, latency budget 0.5), a fresh database per run. "
        "Each run is killed (whole process group) "
        f"{args.window:.0f} s after its steady state began; {args.rounds} round(s), the modes in alternating order.\n\n"
        "**Method.** Steady state starts when every worker is running trials: the first trial's start for one "
        "worker, and for two workers the start of the first trial that overlaps another one (the spawned worker's "
        "first trial, after it has imported torch, loaded the baseline and calibrated its latency table). "
        "Trials per minute = COMPLETE trials in the window, each counted with the fraction of its duration inside "
        "the window (so the trials cut by the window's edges neither inflate nor deflate the rate), divided by "
        "the window length; rounds are pooled (fractional trials / total window time). `cores` = CPU seconds the "
        "search's processes got per wall second in the window (2.0 = both cores, all the time); `load` = the "
        "machine's 1-min load average at the window's start / end (other people's jobs included); `trials/CPU-min` = "
        "trials/min / cores, the rate per core actually obtained (what the modes would reach if each got the same "
        "CPU).\n\n"
        + table(["mode", "round", "window s", "trials/min", "s/trial", "trials", "cores", "trials/CPU-min", "load", "start-up s",
                 "status"], rows)
        + "\n"
        + table(["mode", "trials/min (pooled)", "trials/CPU-min (pooled)"], [(m, f"{agg[m]:.1f}", f"{per_cpu[m]:.1f}") for m in names])
        + "\n"
        + goals_report([
            Goal("2 workers x 1 thread vs 1 worker x 1 thread >= 1.7x", f"**{ratios['2w1t / 1w1t']:.2f}x**", ratios["2w1t / 1w1t"] >= 1.7),
            Goal("2 workers x 1 thread vs 1 worker x 2 threads >= 1.7x", f"**{ratios['2w1t / 1w2t']:.2f}x**", ratios["2w1t / 1w2t"] >= 1.7),
            Goal("per core obtained (trials/CPU-min), 2 workers x 1 thread vs 1 worker x 1 thread (1.0 = a second worker costs nothing per trial)",
                 f"{per_cpu[names[2]] / per_cpu[names[0]]:.2f}x", None),
        ], heading=None)
        + (f"\n**Contended run.** The two-worker runs obtained {cores2:.2f} cores on average, not 2 (one worker: "
           f"{cores1:.2f}): other jobs kept the cores busy and Linux shares them between all runnable processes, so "
           "the second worker added little CPU. The throughput ratio then measures the CPU share the search got, "
           "not how autoprune scales; the per-core rate is the comparable figure. Two intra-op threads on busy cores "
           "spin in OpenMP barriers (see tests/conftest.py), which is why 1 worker x 2 threads collapses here. "
           "Re-run on an idle machine for the scaling goal.\n" if contended else "")
        + "\n"
    )
    return text, {"rates": agg, "ratios": ratios, "runs": runs, "per_cpu": per_cpu, "contended": contended, "cores2": cores2}
