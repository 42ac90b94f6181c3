"""Shared parts of the scale benchmark: its config, worker environments, and cheap readers of running studies (plain SQL)."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sqlite3
import statistics
from pathlib import Path

import optuna

REPO = Path(__file__).resolve().parents[3]
CONFIG = REPO / "experiments" / "configs" / "resnet20_fmnist_tpe.yaml"
CLK_TCK = os.sysconf("SC_CLK_TCK")
ASYNC_PG = "postgresql, async commit"
optuna.logging.set_verbosity(optuna.logging.ERROR)


def env_for(threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(OMP_NUM_THREADS=str(threads), AUTOPRUNE_PROGRESS="", PYTHONUNBUFFERED="1", MLFLOW_DISABLE_TELEMETRY="true")
    return env


def load1() -> float:
    return os.getloadavg()[0]


# --------------------------------------------------------------------------- reading studies cheaply


def pg_trials(url: str, study: str) -> list[tuple[int, str, dt.datetime | None, dt.datetime | None]]:
    """(number, state, start, complete) of a study, by plain SQL (cheap enough to poll while workers run)."""
    import psycopg2

    rest = url.split("://", 1)[1]
    user, hostport_db = rest.split("@", 1)
    hostport, db = hostport_db.split("/", 1)
    host, port = hostport.split(":")
    with contextlib.closing(psycopg2.connect(host=host, port=int(port), user=user, dbname=db, connect_timeout=10)) as c:
        with c.cursor() as cur:
            cur.execute("SELECT t.number, t.state::text, t.datetime_start, t.datetime_complete FROM trials t "
                        "JOIN studies s ON s.study_id = t.study_id WHERE s.study_name = %s ORDER BY t.number", (study,))
            return cur.fetchall()
    return []


def pg_counts(url: str, study: str) -> dict[str, int]:
    try:
        rows = pg_trials(url, study)
    except Exception:  # noqa: BLE001 - tables not created yet
        return {}
    out: dict[str, int] = {}
    for _, state, _, _ in rows:
        out[state] = out.get(state, 0) + 1
    return out


def sqlite_complete(path: Path) -> int | None:
    if not path.exists():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as c:
            return c.execute("SELECT count(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    except sqlite3.Error:
        return None


def sqlite_running_with_params(path: Path) -> bool:
    """A RUNNING trial whose policy is drawn (it is being evaluated)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as c:
            return c.execute("SELECT count(*) FROM trials t WHERE t.state = 'RUNNING' AND "
                             "(SELECT count(*) FROM trial_params p WHERE p.trial_id = t.trial_id) > 0").fetchone()[0] > 0
    except sqlite3.Error:
        return False


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of the live processes of a process group."""
    total = 0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def first_overlap(rows: list, now: dt.datetime) -> dt.datetime | None:
    """When two trials first ran at the same time (the second worker's first trial began)."""
    started = sorted((r for r in rows if r[2] is not None), key=lambda r: r[2])
    for i, r in enumerate(started):
        if any((o[3] or now) > r[2] for o in started[:i]):
            return r[2]
    return None


def steady_rate(rows: list, t0: dt.datetime, t1: dt.datetime) -> tuple[float, float, int]:
    """(trials per minute, mean trial seconds, complete trials touching the window) over [t0, t1].

    A COMPLETE trial counts with the fraction of its duration inside the window, so trials cut by
    the window's edges (the one running when the second worker joined, the ones killed at the end)
    neither inflate nor deflate the rate.
    """
    frac, durations = 0.0, []
    for _, state, s, c in rows:
        if state != "COMPLETE" or s is None or c is None or c <= s:
            continue
        inside = (min(c, t1) - max(s, t0)).total_seconds()
        if inside > 0:
            frac += inside / (c - s).total_seconds()
            durations.append((c - s).total_seconds())
    window = (t1 - t0).total_seconds()
    return 60.0 * frac / window, statistics.mean(durations) if durations else float("nan"), len(durations)
