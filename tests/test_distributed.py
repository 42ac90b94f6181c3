"""Distributed and interrupted searches, for real: worker processes on the throwaway PostgreSQL
server, ``kill -9`` of a worker and of a whole ``autoprune run``, and one MLflow run on the
MLflow server collecting every worker's trials.

The objective is the trained digits MLP under a MAC budget (~0.3 s a trial). A spawned worker
needs 5-20 s to start (import torch, load the baseline, calibrate the latency table), longer
than the whole search would take; so the in-process worker waits, in its evaluation callback
(a real hook of ``run_search``), until the other process holds a trial, and the worker that is
killed holds the evaluation of its first trial until it is. That makes "both processes ran
trials" and "the worker was killed in the middle of a trial" deterministic instead of a race
against the machine's load.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from helpers import FAST_TRAIN, search, tiny_experiment, write_experiment
from mlflow import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from autoprune.app.experiment import run_search
from autoprune.config.loading import parse_config
from autoprune.search.optuna_search import SEED_ATTR
from autoprune.tracking.tracker import Tracker
from autoprune.training.baseline import train_or_load

WORKER_START_TIMEOUT = 90.0  # seconds for a spawned worker to start its first trial on a loaded machine
RUN_TIMEOUT = 240.0


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, digits) -> Path:
    """A trained digits MLP, shared by every process of this module (none of them trains its own)."""
    path = tmp_path_factory.mktemp("baseline") / "mlp-digits.pt"
    train_or_load("mlp", digits, FAST_TRAIN, checkpoint=path, progress=False)
    return path


def config(tmp_path: Path, checkpoint: Path, episodes: int, **search: Any) -> dict[str, Any]:
    """The tiny experiment on the shared baseline, searched by Optuna with quick heartbeats and polls."""
    params = {"n_startup_trials": 4, "heartbeat_interval": 1, "grace_period": 3, "poll_interval": 0.2, **search.pop("params", {})}
    return tiny_experiment(tmp_path, name="dist", model={"checkpoint": str(checkpoint)}, finetune={"epochs": 0},
                           search={"episodes": episodes, "params": params, **search}, tracking={"register": False})


def subprocess_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(OMP_NUM_THREADS="1", AUTOPRUNE_PROGRESS="", PYTHONUNBUFFERED="1", MLFLOW_DISABLE_TELEMETRY="true",
               PYTHONFAULTHANDLER="1")  # SIGABRT dumps every thread's stack into the log
    return env


def read_trials(url: str, study: str) -> list[FrozenTrial]:
    """The study's trials, read through a storage of our own (closed again: no pooled connections left)."""
    storage = optuna.storages.RDBStorage(url)
    try:
        return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
    finally:
        storage.engine.dispose()


def params_key(t: FrozenTrial) -> tuple:
    return tuple(sorted(t.params.items()))


def assert_exact_budget(trials: list[FrozenTrial], episodes: int) -> list[FrozenTrial]:
    """No trial left RUNNING or WAITING, exactly ``episodes`` COMPLETE, no policy computed twice; returns the COMPLETE ones."""
    states = {t.number: t.state for t in trials}
    assert sorted(states) == list(range(len(trials))), "trial numbers must be unique and contiguous"
    assert all(s in (TrialState.COMPLETE, TrialState.FAIL) for s in states.values()), states
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == episodes, f"{len(complete)} COMPLETE trials, {episodes} requested: {states}"
    keys = [params_key(t) for t in complete]
    assert len(set(keys)) == len(keys), "two COMPLETE trials evaluated the same policy"
    return complete


def wait_for(condition: Callable[[], Any], timeout: float, what: str | Callable[[], str], interval: float = 0.1) -> Any:
    """Poll ``condition`` until it is truthy; ``what`` (or what it returns, read at the timeout) names it in the failure."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what() if callable(what) else what}", pytrace=False)


def worker_alive(proc: subprocess.Popen, log_path: Path) -> bool:
    """True while ``proc`` runs; a worker that has exited fails the test at once, with its log."""
    if proc.poll() is not None:
        pytest.fail(f"the worker exited with code {proc.returncode} before its first trial; its log:\n{tail(log_path)}", pytrace=False)
    return True


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} missing)"


@contextlib.contextmanager
def reaped(procs: list[subprocess.Popen]) -> Iterator[list[subprocess.Popen]]:
    """Kill (by pid) whatever the test started and is still running when it ends."""
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)


# --------------------------------------------------------------------------- two workers


TWO_WORKER_EPISODES = 14


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory, checkpoint, postgres_server, mlflow_server) -> dict[str, Any]:
    """``run_search`` with ``search.workers: 2`` on PostgreSQL: this process and one spawned
    ``autoprune worker``, both logging to one run on the MLflow server."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    env_names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved = tracking_utils._tracking_uri, registry_utils._registry_uri, {k: os.environ.get(k) for k in env_names}
    tmp = tmp_path_factory.mktemp("two-workers")
    url = postgres_server.create_database("two_workers")
    raw = config(tmp, checkpoint, TWO_WORKER_EPISODES, storage=url, study="pair", workers=2)
    raw["tracking"] = {"uri": mlflow_server, "register": False, "experiment": "test-distributed-pair"}
    cfg = parse_config(raw)
    mine: list[int] = []
    reader = optuna.storages.RDBStorage(url)

    def worker_has_a_trial() -> bool:
        # Not merely one this process has not run: the baseline seeds wait in the study (WAITING) from the start.
        trials = optuna.load_study(study_name="pair", storage=reader).get_trials(deepcopy=False)
        return any(t.number not in mine and t.state != TrialState.WAITING for t in trials)

    try:
        with Tracker(cfg) as tracker:
            def callback(evaluation) -> None:
                tracker.log_episode(evaluation)
                mine.append(evaluation.index)
                if len(mine) == 1:  # hold this process's first trial until the spawned worker runs one too
                    wait_for(worker_has_a_trial, WORKER_START_TIMEOUT,
                             lambda: f"the spawned worker's first trial; its log:\n{tail(tmp / 'out' / 'workers' / 'worker-1.log')}", 0.2)

            run = run_search(cfg, progress=False, callback=callback, tracking=(tracker.uri, tracker.run_id))
        return {"run": run, "url": url, "run_id": tracker.run_id, "mlflow": mlflow_server, "out": tmp / "out",
                "trials": read_trials(url, "pair")}
    finally:
        reader.engine.dispose()
        tracking_utils._tracking_uri, registry_utils._registry_uri = saved[0], saved[1]
        for k, v in saved[2].items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.mark.timeout(240)
def test_two_workers_on_postgres_run_exactly_the_requested_trials_between_them(two_workers):
    trials, result = two_workers["trials"], two_workers["run"].result
    complete = assert_exact_budget(trials, TWO_WORKER_EPISODES)
    assert len(trials) == TWO_WORKER_EPISODES, "a trial was lost or run twice"
    # nothing re-queued (a stale trial would be); the baseline seeds are the only enqueued trials
    enqueued = [t.number for t in trials if "fixed_params" in t.system_attrs and SEED_ATTR not in t.user_attrs]
    assert not enqueued
    seeds = {t.number: t.user_attrs[SEED_ATTR] for t in trials if SEED_ATTR in t.user_attrs}
    assert sorted(seeds.values()) == sorted(result.extras["seeds"]) and len(seeds) >= 2, "each seed enqueued once"
    assert set(seeds) == set(result.extras["seeds"].values())
    mine = result.extras["trial_numbers"]
    theirs = sorted(set(range(TWO_WORKER_EPISODES)) - set(mine))
    assert mine and theirs, f"both processes must run trials: this one ran {mine}"
    assert result.extras["imported_trials"] == len(theirs)
    log = (two_workers["out"] / "workers" / "worker-1.log").read_text()
    ran = re.search(r"worker done: ran (\d+) trial\(s\) of study 'pair'", log)
    assert ran is not None, log
    assert int(ran.group(1)) == len(theirs), log
    # Every trial's metrics are in the final history, once, in trial order.
    assert [e.index for e in result.history] == list(range(TWO_WORKER_EPISODES))
    stored = {t.number: t.user_attrs["metrics"] for t in complete}
    for e in result.history:
        assert e.metrics.reward == pytest.approx(stored[e.index]["reward"])
        assert e.metrics.accuracy == pytest.approx(stored[e.index]["accuracy"])
    assert result.best is not None and result.best.index in stored


def test_two_workers_log_their_trials_as_steps_of_one_mlflow_run(two_workers):
    client = MlflowClient(tracking_uri=two_workers["mlflow"])
    run = client.get_run(two_workers["run_id"])
    assert run.info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "episode/failed"))
    assert steps == list(range(TWO_WORKER_EPISODES)), "each trial, of either process, is one step of the run"
    rewards = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "episode/reward")}
    by_trial = {t.number: t.user_attrs["metrics"]["reward"] for t in two_workers["trials"]}
    assert rewards == pytest.approx(by_trial)
    experiment = client.get_experiment_by_name("test-distributed-pair")
    assert len(client.search_runs([experiment.experiment_id])) == 1, "workers must not open runs of their own"


# --------------------------------------------------------------------------- kill -9 a worker


#: ``autoprune worker ARGV`` whose evaluation of a trial writes the trial's number to $VICTIM_MARK and then
#: never returns: the test kills the process in the middle of that trial, a moment it knows instead of guesses.
_VICTIM = """
import os, sys, threading
from pathlib import Path
from autoprune.cli import main
from autoprune.objective.evaluator import PolicyEvaluator

evaluate = PolicyEvaluator.evaluate

def held(self, policy, *, index=None):
    if index is None:
        return evaluate(self, policy, index=index)
    mark = Path(os.environ["VICTIM_MARK"])
    mark.with_suffix(".tmp").write_text(str(index))
    mark.with_suffix(".tmp").replace(mark)
    threading.Event().wait()

PolicyEvaluator.evaluate = held
main(["worker", *sys.argv[1:]])
"""


@pytest.mark.timeout(180)
def test_a_worker_killed_mid_trial_is_replaced_and_the_study_still_reaches_its_count(tmp_path, checkpoint, postgres_url):
    episodes = 8
    cfg = parse_config(config(tmp_path, checkpoint, episodes, storage=postgres_url, study="kill"))
    procs: list[subprocess.Popen] = []
    killed: dict[str, Any] = {}
    log_path, mark = tmp_path / "victim.log", tmp_path / "victim-evaluates"

    def hung_victim() -> str:
        """At a timeout: the victim's log, with every thread's stack (faulthandler dumps them on SIGABRT)."""
        procs[0].send_signal(signal.SIGABRT)
        procs[0].wait(timeout=30)
        return f"the worker's first trial; its log:\n{tail(log_path, 120)}"

    def callback(evaluation) -> None:
        if procs:
            return
        with open(log_path, "w") as out:  # the study is published: a worker can join it
            procs.append(subprocess.Popen(
                [sys.executable, "-c", _VICTIM, "--storage", postgres_url, "--study", "kill", "--threads", "1"],
                stdout=out, stderr=subprocess.STDOUT, env={**subprocess_env(), "VICTIM_MARK": str(mark)},
            ))
        victim = procs[0]
        wait_for(lambda: worker_alive(victim, log_path) and mark.is_file(), WORKER_START_TIMEOUT, hung_victim, 0.05)
        victim.send_signal(signal.SIGKILL)  # in the middle of evaluating its trial: its policy is drawn, its metrics never come
        victim.wait(timeout=30)
        killed.update(number=int(mark.read_text()), main=evaluation.index)

    with reaped(procs):
        run = run_search(cfg, progress=False, callback=callback)
    assert procs[0].returncode == -signal.SIGKILL
    trials = read_trials(postgres_url, "kill")
    complete = assert_exact_budget(trials, episodes)
    victim = trials[killed["number"]]
    states = {t.number: (t.state.name, t.system_attrs.get("failed_trial")) for t in trials}
    assert victim.state == TrialState.FAIL and "error" not in victim.user_attrs, \
        f"the killed trial {victim.number} is failed as stale, not as a bad policy: {states}"
    assert victim.datetime_complete is not None
    retries = [t for t in complete if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1, "the killed trial's parameters are queued again, once"
    assert retries[0].params == victim.params
    assert [t.number for t in trials if t.state == TrialState.FAIL] == [victim.number]
    history = run.result.history
    assert sorted(e.index for e in history) == sorted(t.number for t in complete)


@pytest.mark.timeout(60)
def test_a_trial_left_running_without_a_heartbeat_is_failed_and_retried(tmp_path, fresh_mlp_evaluator):
    # Optuna stores a trial as RUNNING before it samples its parameters and starts its heartbeat:
    # a worker killed in between leaves exactly this (which fail_stale_trials alone never fails).
    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage = optuna.storages.RDBStorage(url)
    zombie = optuna.create_study(study_name="z", storage=storage, direction="maximize").ask()
    storage.engine.dispose()
    params = {"storage": url, "study_name": "z", "heartbeat_interval": 1, "grace_period": 1, "poll_interval": 0.2}
    result = search("optuna", fresh_mlp_evaluator, 3, **params)
    trials = read_trials(url, "z")
    assert trials[zombie.number].state == TrialState.FAIL
    complete = assert_exact_budget(trials, 3)
    assert [t.system_attrs.get("failed_trial") for t in complete].count(zombie.number) == 1
    assert len(result.history) == 3


@pytest.mark.timeout(60)
def test_a_worker_dying_after_recording_a_failed_evaluation_does_not_overspend_the_budget(tmp_path, fresh_mlp_evaluator):
    # The worker recorded the failed evaluation's error, then died before finishing the trial: the
    # stale trial is failed and retried, and only the retry counts against the budget.
    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage = optuna.storages.RDBStorage(url, heartbeat_interval=1)
    study = optuna.create_study(study_name="e", storage=storage, direction="maximize")
    dying = study.ask({f"ratio/{u}": optuna.distributions.FloatDistribution(0.0, fresh_mlp_evaluator.max_ratio)
                       for u in fresh_mlp_evaluator.unit_names})
    dying.set_user_attr("error", "out of memory")
    storage.record_heartbeat(dying._trial_id)
    storage.engine.dispose()
    time.sleep(2.5)  # its heartbeat goes stale
    params = {"storage": url, "study_name": "e", "heartbeat_interval": 1, "grace_period": 1, "poll_interval": 0.2}
    search("optuna", fresh_mlp_evaluator, 3, **params)
    trials = read_trials(url, "e")
    assert trials[dying.number].state == TrialState.FAIL
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == dying.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert len(assert_exact_budget(trials, 3)) == 3


# --------------------------------------------------------------------------- kill -9 a whole run, then resume


@pytest.mark.timeout(360)
def test_run_killed_with_sigkill_resumes_its_study_and_its_mlflow_run(tmp_path, checkpoint):
    episodes, kill_after = 10, 3
    raw = config(tmp_path, checkpoint, episodes, params={"grace_period": 2})
    write_experiment(tmp_path / "exp.yaml", raw)
    out, db = tmp_path / "out", f"sqlite:///{tmp_path / 'out' / 'study.db'}"
    command = [sys.executable, "-m", "autoprune", "run", "exp.yaml"]
    counts: list[int] = []  # COMPLETE trials in the study, sampled while both runs go on

    def complete_now() -> int | None:
        # Plain read-only SQL: an Optuna storage opened on a fresh file races the run's own schema creation.
        if not (out / "study.db").exists():
            return None
        try:
            with contextlib.closing(sqlite3.connect(f"file:{out / 'study.db'}?mode=ro", uri=True, timeout=5)) as c:
                return c.execute("SELECT count(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
        except sqlite3.Error:  # no tables yet, or locked right now
            return None

    def sample() -> int:
        n = complete_now()
        if n is not None:
            counts.append(n)
        return n or 0

    procs: list[subprocess.Popen] = []
    with reaped(procs):
        first_log = open(tmp_path / "first.log", "w")
        procs.append(subprocess.Popen(command, cwd=tmp_path, stdout=first_log, stderr=subprocess.STDOUT, env=subprocess_env()))
        first_log.close()
        wait_for(lambda: procs[0].poll() is not None or sample() >= kill_after, RUN_TIMEOUT, "the first trials", 0.05)
        assert procs[0].poll() is None, f"the run ended ({procs[0].returncode}) before it was killed:\n{tail(tmp_path / 'first.log')}"
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(timeout=30)
        at_kill = read_trials(db, "dist")
        run_file = json.loads((out / "mlflow_run.json").read_text())

        second_log = open(tmp_path / "second.log", "w")
        procs.append(subprocess.Popen(command, cwd=tmp_path, stdout=second_log, stderr=subprocess.STDOUT, env=subprocess_env()))
        second_log.close()
        try:
            wait_for(lambda: (sample(), procs[1].poll() is not None)[1], RUN_TIMEOUT, "the resumed run", 0.1)
        except BaseException:  # noqa: BLE001 - a timeout or Ctrl-C: dump the hung stack, then fail
            procs[1].send_signal(signal.SIGABRT)  # where it hangs, into its log
            procs[1].wait(timeout=30)
            raise AssertionError(f"the resumed run hangs:\n{tail(tmp_path / 'second.log', 120)}") from None
    assert procs[1].returncode == 0, tail(tmp_path / "second.log")

    done_at_kill = [t for t in at_kill if t.state == TrialState.COMPLETE]
    assert kill_after <= len(done_at_kill) < episodes
    assert counts == sorted(counts), f"the COMPLETE count went down: {counts}"
    trials = read_trials(db, "dist")
    complete = assert_exact_budget(trials, episodes)
    assert {t.number: t.params for t in done_at_kill} == {t.number: t.params for t in complete if t.number < len(at_kill)}, \
        "trials finished before the kill are kept as they were"
    rerun = [t for t in complete if t.number >= len(at_kill)]
    assert len(rerun) == episodes - len(done_at_kill), "the rerun runs only the missing trials"
    for t in at_kill:
        if t.state == TrialState.RUNNING:  # the trial killed mid-evaluation: failed as stale and retried
            assert trials[t.number].state == TrialState.FAIL
            retried = [r for r in rerun if r.system_attrs.get("failed_trial") == t.number]
            assert len(retried) == 1 and t.params.items() <= retried[0].params.items()  # killed while drawing: the rest is drawn anew

    # The MLflow run of the killed job is the one resumed and finished.
    assert json.loads((out / "mlflow_run.json").read_text())["run_id"] == run_file["run_id"]
    client = MlflowClient(tracking_uri=raw["tracking"]["uri"])
    run = client.get_run(run_file["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags.get("resumed") == "true"
    assert len(client.search_runs([run.info.experiment_id])) == 1
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "episode/failed")]
    assert len(steps) == len(set(steps)) and set(steps) <= {t.number for t in complete}, "a trial is logged once, under its number"
    assert f"MLflow run {run_file['run_id']}" in (tmp_path / "second.log").read_text()
