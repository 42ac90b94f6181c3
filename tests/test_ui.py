"""``autoprune ui`` for real: the MLflow server it starts stops with it, and nothing keeps the port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from services import free_port

START_TIMEOUT = 300.0  # seconds for the MLflow server to listen on a loaded machine


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def descendants(pid: int) -> set[int]:
    """Every process below ``pid``, from /proc (children of children too)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_ui_stopped_by_a_signal_stops_its_mlflow_server_and_frees_the_port(sig: signal.Signals, tmp_path: Path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    log = open(tmp_path / "ui.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "autoprune", "ui", "--uri", f"sqlite:///{tmp_path}/mlflow.db", "--port", str(port)],
                            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()
    children: set[int] = set()
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not listening(port):
            assert proc.poll() is None, f"autoprune ui exited ({proc.returncode}):\n{(tmp_path / 'ui.log').read_text()}"
            assert time.monotonic() < deadline, f"the UI did not listen within {START_TIMEOUT:.0f} s"
            time.sleep(0.5)
        children = descendants(proc.pid)
        assert children, "the MLflow server runs as a child process"
        proc.send_signal(sig)
        code = proc.wait(timeout=60)
        assert code == 128 + sig, (tmp_path / "ui.log").read_text()
        deadline = time.monotonic() + 15
        while any(alive(p) for p in children) or listening(port):
            assert time.monotonic() < deadline, f"left running: {[p for p in children if alive(p)]}, port open: {listening(port)}"
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in children:  # orphans of a failed test, reparented: kill them by pid
            if alive(p):
                os.kill(p, signal.SIGKILL)
