"""The MLflow UI as a child process that never outlives ``autoprune ui``.

``mlflow ui`` starts a server that may start workers of its own. The server runs in a process
group of its own; when ``autoprune ui`` ends (the server exits, or SIGTERM / SIGINT / SIGHUP
arrives), the whole group is stopped: SIGTERM, then SIGKILL after a grace period, so nothing keeps
listening on the port.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable

from autoprune.tracking.store import resolve_tracking_uri

#: The page to open: the experiments in MLflow 3's "Model training" view. MLflow 3.17's UI starts in
#: its GenAI view whatever an experiment's ``mlflow.experimentKind`` tag says (the tag decides only
#: where the view switcher is off), and the GenAI view shows no runs.
UI_PAGE = "#/experiments?workflowType=machine_learning"

#: Signals that stop the UI (and its server's process group).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class _Stopped(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop the process group led by ``proc``: SIGTERM, then SIGKILL after ``grace`` seconds.

    Groups already gone are ignored; the members left behind by a leader that exited are stopped too.
    """
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        if not _group_alive(proc.pid):
            break


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def serve_ui(
    uri: str | None, *, host: str = "127.0.0.1", port: int = 5000, announce: Callable[[str], None] | None = None, access_log: bool = False
) -> int:
    """Run the MLflow UI on a tracking store until it exits or this process gets SIGTERM, SIGINT or SIGHUP.

    Args:
        uri: The tracking URI (see :func:`autoprune.tracking.store.resolve_tracking_uri`; None:
            ``sqlite:///<current directory>/mlflow.db``).
        host: Address to bind.
        port: TCP port.
        announce: Called once with a line saying where the UI is.
        access_log: Let uvicorn print one line per HTTP request (``autoprune -v ui``); off by
            default, since the UI polls and the log buries everything else in the terminal.

    Returns:
        The exit code: the server's, or 128 + the signal number after a stop signal (130 for SIGINT).

    Raises:
        ConfigError: an invalid or unreachable tracking URI.
    """
    store = resolve_tracking_uri(uri)
    if announce is not None:
        announce(f"MLflow UI on http://{host}:{port}/{UI_PAGE} (store {store}); Ctrl-C to stop")
        announce("If the page shows GenAI traces, pick 'Model training' in the top-left switcher once: the browser remembers it.")

    def stop(signum: int, _frame: object) -> None:
        raise _Stopped(signum)

    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store, "--host", host, "--port", str(port), "--workers", "1"]
    if not access_log:
        cmd += ["--uvicorn-opts", "--no-access-log"]
    # One user: one web worker, and none of MLflow's background job runners (GenAI scorers), which
    # start a dozen processes and take minutes on a small machine.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    proc = None
    try:
        for s in STOP_SIGNALS:
            signal.signal(s, stop)
        proc = subprocess.Popen(cmd, env=env, start_new_session=True)  # its own group: stopped as a whole
        return proc.wait()
    except _Stopped as e:
        return 128 + e.signum
    finally:
        for s in STOP_SIGNALS:  # a second signal must not interrupt the cleanup
            signal.signal(s, signal.SIG_IGN)
        if proc is not None:
            stop_group(proc)
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


__all__ = ["serve_ui", "stop_group"]
