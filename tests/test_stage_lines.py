"""One stage line per step on stderr when stdout is not a terminal (issue 24, item 7).

Before, ``run`` and ``train`` printed nothing for minutes into a log file or a CI job.
"""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

from helpers import cli, tiny_experiment, write_experiment

from autoprune.cli import STAGE_PREFIX

TESTS = Path(__file__).resolve().parent


def _stages(err: str) -> list[str]:
    return [line.removeprefix(STAGE_PREFIX).split(":", 1)[0] for line in err.splitlines() if line.startswith(STAGE_PREFIX)]


def test_run_prints_one_line_per_step_in_order_when_stdout_is_captured(tmp_path, capsys):
    path = write_experiment(tmp_path / "exp.yaml", tiny_experiment(tmp_path, search={"episodes": 2}))
    res = cli(capsys, "run", str(path))
    assert res.code == 0, res.err
    assert _stages(res.err) == ["baseline", "objective", "search", "apply", "fine-tune", "measure", "export", "MLflow"]
    assert f"{STAGE_PREFIX}search: optuna, 2 episodes" in res.err.splitlines()


def test_train_says_what_it_trains(tmp_path, capsys):
    res = cli(capsys, "train", "--model", "mlp", "--data", "digits", "--epochs", "1", "--checkpoint", str(tmp_path / "c.pt"))
    assert res.code == 0, res.err
    assert res.err.splitlines() == [f"{STAGE_PREFIX}baseline: mlp on digits, training 1 epoch(s) into {tmp_path / 'c.pt'}"]
    again = cli(capsys, "train", "--model", "mlp", "--data", "digits", "--epochs", "1", "--checkpoint", str(tmp_path / "c.pt"))
    assert again.err.splitlines() == [f"{STAGE_PREFIX}baseline: mlp on digits, weights from {tmp_path / 'c.pt'}"]


def test_no_stage_lines_when_stdout_is_a_terminal(tmp_path):
    leader, follower = pty.openpty()
    try:
        done = subprocess.run([sys.executable, "-m", "autoprune", "train", "--model", "mlp", "--data", "digits", "--epochs", "1",
                               "--checkpoint", str(tmp_path / "c.pt")], stdout=follower, stderr=subprocess.PIPE, text=True, timeout=600,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS.parent)})
    finally:
        os.close(follower)
        os.close(leader)
    assert done.returncode == 0, done.stderr
    assert STAGE_PREFIX not in done.stderr
