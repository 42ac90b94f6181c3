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


def serves(pid: int, port: int) -> bool:
    """Whether ``pid`` or a process below it holds a TCP socket listening on ``port`` (read from /proc)."""
    listening_inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                listening_inodes.add(f"socket:[{inode}]")
    for p in {pid} | descendants(pid):
        try:
            fds = list(Path(f"/proc/{p}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in listening_inodes:
                    return True
            except OSError:
                continue
    return False


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def start_ui(tmp_path: Path) -> tuple[subprocess.Popen, int, Path]:
    """``autoprune ui`` listening on a free port: ``(process, port, log)``.

    The port is free when picked; if another process takes it before the MLflow server binds it,
    the UI exits saying so and another port is tried (as the ``mlflow_server`` fixture does). The
    UI counts as started when the port's listening socket is its own, not merely when something
    answers on the port.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    for attempt in range(3):
        port, log_path = free_port(), tmp_path / f"ui-{attempt}.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen([sys.executable, "-m", "autoprune", "ui", "--uri", f"sqlite:///{tmp_path}/mlflow.db", "--port", str(port)],
                                    cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + START_TIMEOUT
        while proc.poll() is None and not serves(proc.pid, port):
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                pytest.fail(f"the UI did not listen within {START_TIMEOUT:.0f} s:\n{log_path.read_text()}")
            time.sleep(0.5)
        if proc.poll() is None:
            return proc, port, log_path
        if "address already in use" not in log_path.read_text().lower():
            pytest.fail(f"autoprune ui exited ({proc.returncode}):\n{log_path.read_text()}")
    pytest.fail(f"autoprune ui: no free port after 3 attempts:\n{log_path.read_text()}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_ui_stopped_by_a_signal_stops_its_mlflow_server_and_frees_the_port(sig: signal.Signals, tmp_path: Path):
    proc, port, log_path = start_ui(tmp_path)
    children: set[int] = set()
    try:
        children = descendants(proc.pid)
        assert children, "the MLflow server runs as a child process"
        proc.send_signal(sig)
        code = proc.wait(timeout=60)
        assert code == 128 + sig, log_path.read_text()
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
