"""Entry of ``python -m experiments.bench.scale``: start PostgreSQL, run the three sections, write ``scale.md``."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from tests.helpers.postgres import DURABLE_SETTINGS, throwaway_postgres

from .. import scale
from .._common import header, table, write
from .faults import fault_section
from .storage import storage_section
from .throughput import throughput_section


def main() -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {scale.__name__}", description=scale.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: short windows, few trials")
    ap.add_argument("--window", type=float, default=None, help="steady-state seconds per throughput run (default 60, quick 10)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds over the three modes (default 2, quick 1)")
    ap.add_argument("--out", default=None, help="results file in experiments/results (default scale.md; quick: scale-quick.md)")
    args = ap.parse_args()
    q = args.quick
    args.window = args.window or (10.0 if q else 60.0)
    args.rounds = args.rounds or (1 if q else 2)
    args.start_timeout = 90.0 if q else 180.0
    args.cheap_trials, args.real_trials, args.storage_reps = (30, 3, 1) if q else (100, 12, 2)
    args.fault_episodes = 6 if q else 14
    args.out = args.out or ("scale-quick.md" if q else "scale.md")

    started = time.monotonic()
    load_start = os.getloadavg()
    with throwaway_postgres(DURABLE_SETTINGS) as pg, tempfile.TemporaryDirectory(prefix="autoprune-scale-") as tmpdir:
        tmp = Path(tmpdir)
        t_text, t = throughput_section(pg, tmp, args)
        s_text, s = storage_section(pg, tmp, args)
        f_text, f = fault_section(pg, tmp, args)
    minutes = (time.monotonic() - started) / 60
    load_end = os.getloadavg()
    out = header("Scale-out benchmark: workers on PostgreSQL, storage cost, kill -9", threads=1)
    out += (
        f"ResNet-20 / Fashion-MNIST (committed baseline), Optuna TPE, latency budget 0.5 (batch 1). Whole run: "
        f"{minutes:.1f} min; load average (1/5/15 min) at start {'/'.join(f'{x:.1f}' for x in load_start)}, "
        f"at end {'/'.join(f'{x:.1f}' for x in load_end)}. The machine is shared: a load above 2 means other jobs "
        "took CPU from these measurements.\n\n"
    )
    out += t_text + s_text + f_text
    mem, sql, pgs = (s[("trivial objective", n)] for n in ("in-memory", "sqlite", "postgresql"))
    summary = table(["measure", "value"], [
        ("trials/min, 1 worker x 1 thread", f"{t['rates']['1 worker x 1 thread']:.1f}"),
        ("trials/min, 1 worker x 2 threads", f"{t['rates']['1 worker x 2 threads']:.1f}"),
        ("trials/min, 2 workers x 1 thread", f"{t['rates']['2 workers x 1 thread']:.1f}"),
        ("ratio 2w x 1t / 1w x 1t", f"{t['ratios']['2w1t / 1w1t']:.2f}x"),
        ("ratio 2w x 1t / 1w x 2t", f"{t['ratios']['2w1t / 1w2t']:.2f}x"),
        ("trials/CPU-min, 1w x 1t / 2w x 1t", f"{t['per_cpu']['1 worker x 1 thread']:.1f} / {t['per_cpu']['2 workers x 1 thread']:.1f}"),
        ("cores obtained by the 2-worker runs", f"{t['cores2']:.2f}" + (" (contended: see section 1)" if t["contended"] else "")),
        ("ms/trial, trivial objective: memory / sqlite / postgresql", f"{mem['ms']:.1f} / {sql['ms']:.1f} / {pgs['ms']:.1f}"),
        ("storage cost per trial: sqlite / postgresql (vs memory)",
         f"{sql['overhead_ms'] - mem['overhead_ms']:+.1f} / {pgs['overhead_ms'] - mem['overhead_ms']:+.1f} ms"),
        ("kill -9 of a worker: study complete, RUNNING left",
         f"{'yes' if f['worker_kill']['reached'] else 'no'}, {f['worker_kill']['final']['RUNNING']}"),
        ("kill -9 + rerun: monotonic, duplicates, final/requested",
         f"{'yes' if f['resume']['monotonic'] else 'no'}, {f['resume']['duplicates']}, "
         f"{f['resume']['final_complete']}/{f['resume']['episodes']}"),
    ])
    out += "## Summary\n\n" + summary
    path = write(args.out, out)
    print()
    print(summary)
    print(f"written to {path} ({minutes:.1f} min)")


if __name__ == "__main__":
    main()
