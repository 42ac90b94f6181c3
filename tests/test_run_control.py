"""One output folder, one run; SIGTERM handled like Ctrl-C (issue 24, items 1 and 2), on real ``autoprune run`` processes.

Before, two runs of one config at once both exited 0 into one folder and one Optuna study, and
SIGTERM (``kill``, ``timeout``, docker, Slurm) left the MLflow run and a trial ``RUNNING``,
printing nothing. The first run here is held inside a search trial by a gate
(``plugins_for_tests:GatedImportance``), so each test acts while a trial is really running.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from helpers import Result, assert_user_error, cli, tiny_experiment, write_experiment
from mlflow import MlflowClient

from autoprune.app.folder_lock import LOCK_FILE, folder_lock

TESTS = Path(__file__).resolve().parent
WAIT = 600  # seconds: a bound on a starting process under a loaded machine, never a speed claim


def _config(tmp_path: Path, **sections: object) -> Path:
    return write_experiment(tmp_path / "exp.yaml", tiny_experiment(
        tmp_path, pruning={"importance": "plugins_for_tests:GatedImportance"}, search={"episodes": 4}, **sections))


def _env(gate: Path | None) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}
    env.pop("AUTOPRUNE_TEST_GATE", None)
    if gate is not None:
        env["AUTOPRUNE_TEST_GATE"] = str(gate)
    return env


def _start(tmp_path: Path, config: Path, gate: Path) -> subprocess.Popen[str]:
    """``autoprune run CONFIG`` in a real process, returned once it waits inside a search trial."""
    gate.mkdir(exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "autoprune", "run", str(config)], cwd=tmp_path, env=_env(gate), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + WAIT
    while not (gate / "waiting").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"the run never reached a search trial (exit {proc.returncode})\n{out}\n{err}")
        time.sleep(0.05)
    return proc


def _run(tmp_path: Path, config: Path, *args: str) -> Result:
    done = subprocess.run([sys.executable, "-m", "autoprune", "run", str(config), *args], cwd=tmp_path, env=_env(None), text=True,
                          capture_output=True, timeout=WAIT)
    return Result.of(done)


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def _study(tmp_path: Path) -> optuna.Study:
    return optuna.load_study(study_name=None, storage=f"sqlite:///{tmp_path / 'out' / 'study.db'}")


# ------------------------------------------------------------------ item 1: one folder, one run
def test_a_second_run_of_one_config_is_refused_in_one_line_while_the_first_runs(tmp_path):
    config, gate = _config(tmp_path), tmp_path / "gate"
    first = _start(tmp_path, config, gate)
    try:
        lock = json.loads((tmp_path / "out" / LOCK_FILE).read_text())
        assert lock["pid"] == first.pid and "run" in lock["command"]
        before, pointer = _files(tmp_path / "out"), (tmp_path / "out" / "mlflow_run.json").read_text()
        second = _run(tmp_path, config)
        assert_user_error(second, "output_dir", f"PID {first.pid}", "run the same command again")
        assert _files(tmp_path / "out") == before  # the refused run wrote nothing (the first one's heartbeat touches study.db)
        assert (tmp_path / "out" / "mlflow_run.json").read_text() == pointer
    finally:
        (gate / "open").touch()
    out, err = first.communicate(timeout=WAIT)
    assert first.returncode == 0, err
    assert not (tmp_path / "out" / LOCK_FILE).exists()  # released on exit
    runs = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").search_runs(
        [e.experiment_id for e in MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").search_experiments()])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_note(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "command": "autoprune run exp.yaml"}))
    config = write_experiment(tmp_path / "exp.yaml", tiny_experiment(tmp_path, search={"episodes": 2}))
    res = cli(capsys, "search", str(config))
    assert res.code == 0, res.err
    note = " ".join(res.err.split())  # rich wraps long log lines
    assert "took over the lock" in note and f"PID {dead.pid}" in note and "no longer running" in note
    assert (tmp_path / "out" / "policy.json").is_file() and not (tmp_path / "out" / LOCK_FILE).exists()


def test_the_lock_is_reentrant_in_one_process_and_refuses_another(tmp_path):
    with folder_lock(tmp_path, command="outer") as path:
        with folder_lock(tmp_path, command="inner"):
            assert json.loads(path.read_text())["command"] == "outer"
        other = subprocess.run([sys.executable, "-c", f"from autoprune.app.folder_lock import folder_lock\nwith folder_lock({str(tmp_path)!r}): pass"],
                               env=_env(None), capture_output=True, text=True, timeout=WAIT)
        assert other.returncode != 0 and f"in use by PID {os.getpid()} (outer)" in other.stderr
        assert path.exists()
    assert not path.exists()
    with folder_lock(tmp_path):  # free again
        pass


# ------------------------------------------------------------------ item 2: SIGTERM like Ctrl-C
def test_sigterm_during_a_search_ends_the_run_killed_fails_the_trial_and_the_rerun_resumes(tmp_path):
    config, gate = _config(tmp_path), tmp_path / "gate"
    proc = _start(tmp_path, config, gate)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 128 + signal.SIGTERM, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1] == "autoprune: stopped by SIGTERM; run the same command again to continue where it stopped", err
    assert "Traceback" not in err

    run_id = json.loads((tmp_path / "out" / "mlflow_run.json").read_text())["run_id"]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert client.get_run(run_id).info.status == "KILLED"
    states = [t.state for t in _study(tmp_path).trials]
    assert optuna.trial.TrialState.RUNNING not in states and states[-1] == optuna.trial.TrialState.FAIL
    assert not (tmp_path / "out" / LOCK_FILE).exists()

    (gate / "open").touch()
    again = _run(tmp_path, config)
    assert again.code == 0, again.err
    assert client.get_run(run_id).info.status == "FINISHED"  # the same MLflow run, resumed
    complete = [t for t in _study(tmp_path).trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4  # the episodes of the config, the trials finished before SIGTERM included
