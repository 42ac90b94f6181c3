"""Real services for tests: a throwaway PostgreSQL server and an MLflow tracking server on it.

Loaded as a pytest plugin by ``tests/conftest.py``. Fixtures:

* ``postgres_server`` (session): a :class:`PostgresServer` on 127.0.0.1 at a free port, data
  in a temporary directory, fsync off, trust authentication; stopped and removed at the end.
  The server itself is ``tests/helpers/postgres.py``, which the benchmarks start too.
* ``make_postgres_db`` (function): ``make(hint=None) -> url``, a fresh database per call.
* ``postgres_url`` (function): a fresh database for the test, as a SQLAlchemy URL
  ``postgresql+psycopg2://autoprune@127.0.0.1:<port>/<db>``. Wider-scoped fixtures call
  ``postgres_server.create_database(hint)`` instead.
* ``mlflow_backend_url`` (session): the PostgreSQL database behind ``mlflow_server``.
* ``mlflow_server`` (session): ``http://127.0.0.1:<port>`` of ``mlflow server`` storing runs
  in that database and proxying artifacts to a temporary directory.

Missing PostgreSQL binaries or psycopg2 fail the requesting tests (run ``scripts/setup.sh``);
with ``AUTOPRUNE_SKIP_SERVICES=1`` they are skipped instead. As root the server runs as the
``postgres`` system user; servers (and the MLflow server on them) left behind by a killed test
session are stopped by the next one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import NoReturn

import pytest
from helpers.postgres import (
    HOST,
    PGID_SUFFIX,
    PostgresError,
    PostgresServer,
    PostgresUnavailable,
    free_port,
    kill_group,
    start_postgres,
    tail,
)

SKIP_ENV = "AUTOPRUNE_SKIP_SERVICES"
MLFLOW_START_TIMEOUT = 60.0


def _unavailable(message: str) -> NoReturn:
    """Fail (the services are part of the suite), or skip with AUTOPRUNE_SKIP_SERVICES=1."""
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{message} ({SKIP_ENV}=1)")
    pytest.fail(f"{message}; run scripts/setup.sh (or set {SKIP_ENV}=1 to skip these tests)", pytrace=False)


# ----------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server for the session (about 1-2 s to start; ``helpers.postgres``)."""
    try:
        server = start_postgres()
    except PostgresUnavailable as e:
        _unavailable(str(e))
    except PostgresError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_postgres_db(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> Iterator[Callable[..., str]]:
    """``make(hint=None) -> url``: a fresh database per call (~30 ms), dropped after the test."""
    made: list[str] = []

    def make(hint: str | None = None) -> str:
        url = postgres_server.create_database(hint or request.node.name)
        made.append(url)
        return url

    yield make
    for url in made:
        try:
            postgres_server.drop_database(url)
        except Exception:  # noqa: BLE001 - the server goes away at the end of the session anyway
            pass


@pytest.fixture
def postgres_url(make_postgres_db: Callable[..., str]) -> str:
    """SQLAlchemy URL of a fresh, empty database for this test: ``postgresql+psycopg2://autoprune@127.0.0.1:<port>/<db>``."""
    return make_postgres_db()


# ----------------------------------------------------------------------- MLflow


@pytest.fixture(scope="session")
def mlflow_backend_url(postgres_server: PostgresServer) -> str:
    """SQLAlchemy URL of the PostgreSQL database that ``mlflow_server`` stores runs in."""
    return postgres_server.create_database("mlflow")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="session")
def mlflow_server(postgres_server: PostgresServer, mlflow_backend_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``http://127.0.0.1:<port>`` of an MLflow tracking server on PostgreSQL (~10 s to start).

    Artifacts are proxied by the server (``mlflow-artifacts:/``) into a temporary directory,
    so clients log them over HTTP. One worker, no job runner.
    """
    workdir = tmp_path_factory.mktemp("mlflow-server")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}  # e.g. MLFLOW_TRACKING_URI of earlier tests
    env.update(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", PYTHONUNBUFFERED="1", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"))
    pgid_file = postgres_server.root / f"mlflow{PGID_SUFFIX}"
    for attempt in range(3):
        port = free_port()
        url = f"http://{HOST}:{port}"
        log_path = workdir / f"server-{attempt}.log"
        cmd = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", mlflow_backend_url,
            "--serve-artifacts", "--artifacts-destination", str(workdir / "artifacts"),
            "--host", HOST, "--port", str(port), "--workers", "1",
        ]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=workdir, start_new_session=True)
        pgid_file.write_text(str(proc.pid))
        deadline = time.monotonic() + MLFLOW_START_TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline and not _healthy(url):
            time.sleep(0.2)
        if proc.poll() is None and _healthy(url):
            break
        _stop_group(proc)
        if "address already in use" in tail(log_path).lower():
            continue
        what = f"exited with code {proc.returncode}" if time.monotonic() < deadline else f"not healthy after {MLFLOW_START_TIMEOUT:.0f} s"
        pytest.fail(f"mlflow server {what}: {' '.join(cmd)}\n--- log:\n{tail(log_path)}", pytrace=False)
    else:
        pytest.fail(f"mlflow server: no free port after 3 attempts\n--- log:\n{tail(log_path)}", pytrace=False)
    try:
        yield url
    finally:
        _stop_group(proc)
        pgid_file.unlink(missing_ok=True)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group, SIGKILL whatever is left after 10 s."""
    kill_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    kill_group(proc.pid, signal.SIGKILL)
    proc.wait()


__all__ = ["free_port"]  # tests/test_ui.py starts its own server on a free port
