"""Section 3 of the scale benchmark: what survives ``kill -9`` of a worker, and of a single-process search run again."""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from autoprune.app.experiment import run_search
from autoprune.config.loading import load_config
from tests.helpers.postgres import PostgresServer

from .._common import table
from .studies import CONFIG, REPO, env_for, pg_counts, sqlite_complete, sqlite_running_with_params

# --------------------------------------------------------------------------- 3. faults


class Sampler(threading.Thread):
    """Counts of trial states over time, read every ``interval`` seconds until stopped."""

    def __init__(self, read, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.read, self.interval, self.samples, self.stop_event = read, interval, [], threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            with contextlib.suppress(Exception):
                value = self.read()
                if value is not None:
                    self.samples.append((time.monotonic(), value))  # absolute monotonic time
            self.stop_event.wait(self.interval)

    def stop(self) -> list:
        self.stop_event.set()
        self.join()
        return self.samples


def kill_worker_fault(pg: PostgresServer, tmp: Path, episodes: int, grace: int) -> tuple[list, dict[str, Any]]:
    """This process is one worker; a spawned ``autoprune worker`` is SIGKILLed in the middle of a trial."""
    url = pg.create_database("fault_worker")
    study = "fault-worker"
    cfg = load_config(CONFIG, ["latency.threads=1", f"search.episodes={episodes}", f"search.storage={url}", f"search.study={study}",
                               "search.params.heartbeat_interval=1", f"search.params.grace_period={grace}",
                               f"output_dir={tmp / 'fault-worker'}"])
    torch.set_num_threads(1)
    reader = optuna.storages.RDBStorage(url)
    info: dict[str, Any] = {}
    procs: list[subprocess.Popen] = []
    sampler = Sampler(lambda: pg_counts(url, study))

    def running_other(current: int) -> int | None:
        trials = optuna.load_study(study_name=study, storage=reader).get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        names = next((set(t.params) for t in trials if t.number == current), set())
        return next((t.number for t in trials if t.number != current and names and set(t.params) == names), None)

    def callback(evaluation) -> None:
        if procs:
            return
        log = open(tmp / "fault-worker.log", "w")
        procs.append(subprocess.Popen([sys.executable, "-m", "autoprune", "worker", "--storage", url, "--study", study,
                                       "--threads", "1"], stdout=log, stderr=subprocess.STDOUT, env=env_for(1), cwd=REPO))
        log.close()
        victim, deadline = procs[0], time.monotonic() + 180
        while time.monotonic() < deadline:
            time.sleep(0.1)
            if running_other(evaluation.index) is None:
                continue
            victim.send_signal(signal.SIGSTOP)  # frozen, then checked: killed in the middle of a trial for sure
            time.sleep(0.2)
            number = running_other(evaluation.index)
            if number is not None:
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                info.update(number=number, at=time.monotonic(), counts_at_kill=pg_counts(url, study))
                return
            victim.send_signal(signal.SIGCONT)
        info["error"] = "the worker ran no trial within 180 s"

    sampler.start()
    try:
        run_search(cfg, progress=False, callback=callback)
    finally:
        samples = sampler.stop()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        reader.engine.dispose()
    trials = optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)
    states = (TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)
    counts = lambda ts: {s.name: sum(t.state == s for t in ts) for s in states}  # noqa: E731
    after_grace = None
    if "at" in info:
        later = [c for t, c in samples if t >= info["at"] + grace + 2]
        after_grace = later[0] if later else None
    victim = trials[info["number"]] if "number" in info else None
    retried = [t for t in trials if victim is not None and t.system_attrs.get("failed_trial") == victim.number]
    final = counts(trials)
    res = {
        "episodes": episodes, "grace": grace, "killed_trial": info.get("number"), "at_kill": info.get("counts_at_kill"),
        "after_grace": after_grace, "final": final, "reached": final["COMPLETE"] == episodes,
        "victim_state": victim.state.name if victim else None,
        "retried_same_params": bool(retried) and all(t.params == victim.params for t in retried),
        "retry_state": retried[0].state.name if retried else None, "error": info.get("error"),
    }
    return samples, res


def resume_fault(tmp: Path, episodes: int) -> tuple[list, dict[str, Any]]:
    """A single-process ``autoprune search`` (SQLite study) killed with SIGKILL mid-way, then run again."""
    out = tmp / "fault-resume"
    db = out / "study.db"
    cmd = [sys.executable, "-m", "autoprune", "search", str(CONFIG), "-s", "name=scale-resume", "-s", f"output_dir={out}",
           "-s", f"search.episodes={episodes}", "-s", "latency.threads=1", "-s", "search.params.heartbeat_interval=1",
           "-s", "search.params.grace_period=2"]
    sampler = Sampler(lambda: sqlite_complete(db), 0.25)
    sampler.start()
    kill_after = max(2, episodes // 3)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with open(out / "first.log", "w") as log:
        first = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env_for(1), cwd=REPO)
    while first.poll() is None and time.monotonic() - t0 < 300:
        time.sleep(0.1)
        if (sqlite_complete(db) or 0) < kill_after or not sqlite_running_with_params(db):
            continue
        first.send_signal(signal.SIGSTOP)  # frozen, then checked: killed in the middle of a trial
        time.sleep(0.2)
        if sqlite_running_with_params(db):
            break
        first.send_signal(signal.SIGCONT)
    killed_at = time.monotonic() - t0
    first.send_signal(signal.SIGKILL)
    first.wait()
    at_kill = optuna.load_study(study_name="scale-resume", storage=f"sqlite:///{db}").get_trials(deepcopy=False)
    with open(out / "second.log", "w") as log:
        second = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env_for(1), cwd=REPO, timeout=600)
    samples = sampler.stop()
    trials = optuna.load_study(study_name="scale-resume", storage=f"sqlite:///{db}").get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    keys = [tuple(sorted(t.params.items())) for t in complete]
    done_at_kill = sum(t.state == TrialState.COMPLETE for t in at_kill)
    series = [c for _, c in samples]
    res = {
        "episodes": episodes, "killed_at_s": killed_at, "first_exit": first.returncode, "second_exit": second.returncode,
        "done_at_kill": done_at_kill, "running_at_kill": sum(t.state == TrialState.RUNNING for t in at_kill),
        "final_complete": len(complete), "duplicates": len(keys) - len(set(keys)),
        "rerun_ran": sum(1 for t in complete if t.number >= len(at_kill)),
        "left_running": sum(t.state == TrialState.RUNNING for t in trials),
        "failed": sum(t.state == TrialState.FAIL for t in trials),
        "monotonic": series == sorted(series), "series": series,
    }
    return samples, res


def fault_section(pg: PostgresServer, tmp: Path, args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    print("[faults] kill -9 one of two workers ...", flush=True)
    _, a = kill_worker_fault(pg, tmp, args.fault_episodes, grace=3)
    print("[faults] kill -9 a single-process search, then resume ...", flush=True)
    _, b = resume_fault(tmp, args.fault_episodes)
    fmt = lambda c: ", ".join(f"{k} {v}" for k, v in (c or {}).items() if v) or "-"  # noqa: E731
    changes = [b["series"][0]] + [v for p, v in zip(b["series"], b["series"][1:]) if v != p] if b["series"] else []
    text = (
        "## 3. Faults\n\n"
        f"**kill -9 of one of two workers** (PostgreSQL, {a['episodes']} trials, heartbeat 1 s, grace period {a['grace']} s): "
        "this process runs one worker; an `autoprune worker` joins, is frozen (SIGSTOP) while one of its trials is "
        "RUNNING with its policy drawn, and is killed (SIGKILL).\n\n"
        + table(["when", "trial states"], [
            ("at the kill", fmt(a["at_kill"])),
            ("kill + grace + 2 s", fmt(a["after_grace"])),
            ("end", fmt(a["final"])),
        ])
        + f"\n- killed trial {a['killed_trial']}: {a['victim_state']} (stale); its parameters re-queued and run: "
        f"{'yes' if a['retried_same_params'] else 'no'} ({a['retry_state']})\n"
        f"- study reached its {a['episodes']} COMPLETE trials: {'yes' if a['reached'] else '**no**'}; "
        f"RUNNING left: {a['final']['RUNNING']}\n"
        + (f"- error: {a['error']}\n" if a.get("error") else "")
        + f"\n**kill -9 of a single-process search, then the same command again** (SQLite study in the output "
        f"directory, {b['episodes']} trials, heartbeat 1 s, grace 2 s): killed {b['killed_at_s']:.0f} s after launch "
        f"with {b['done_at_kill']} trials COMPLETE and {b['running_at_kill']} RUNNING.\n\n"
        + table(["check", "result"], [
            ("COMPLETE count over time (both runs, sampled every 0.25 s, distinct values)", " -> ".join(map(str, changes))),
            ("count never decreased", "yes" if b["monotonic"] else "**no**"),
            ("trials the rerun completed", f"{b['rerun_ran']} (missing: {b['episodes'] - b['done_at_kill']})"),
            ("duplicate policies among COMPLETE trials", b["duplicates"]),
            ("final COMPLETE / requested", f"{b['final_complete']} / {b['episodes']}"),
            ("FAIL (killed trial, stale) / RUNNING left", f"{b['failed']} / {b['left_running']}"),
            ("exit code of the rerun", b["second_exit"]),
        ])
        + "\n"
    )
    return text, {"worker_kill": a, "resume": b}
