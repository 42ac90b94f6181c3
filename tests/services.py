"""Real services for tests: a throwaway PostgreSQL server and an MLflow tracking server on it.

Loaded as a pytest plugin by ``tests/conftest.py``. Fixtures:

* ``postgres_server`` (session): a :class:`PostgresServer` on 127.0.0.1 at a free port, data
  in a temporary directory, fsync off, trust authentication; stopped and removed at the end.
* ``make_postgres_db`` (function): ``make(hint=None) -> url``, a fresh database per call.
* ``postgres_url`` (function): a fresh database for the test, as a SQLAlchemy URL
  ``postgresql+psycopg2://autoprune@127.0.0.1:<port>/<db>``. Wider-scoped fixtures call
  ``postgres_server.create_database(hint)`` instead.
* ``mlflow_backend_url`` (session): the PostgreSQL database behind ``mlflow_server``.
* ``mlflow_server`` (session): ``http://127.0.0.1:<port>`` of ``mlflow server`` storing runs
  in that database and proxying artifacts to a temporary directory.

Missing PostgreSQL binaries or psycopg2 fail the requesting tests (run ``scripts/setup.sh``);
with ``AUTOPRUNE_SKIP_SERVICES=1`` they are skipped instead. ``initdb`` refuses to run as
root, so as root every server command runs as the ``postgres`` system user (``runuser``).
Servers left behind by a killed test session are stopped by the next one.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

SKIP_ENV = "AUTOPRUNE_SKIP_SERVICES"
SUPERUSER = "autoprune"
HOST = "127.0.0.1"
MLFLOW_START_TIMEOUT = 60.0
_PREFIX = "autoprune-pg-"
_OWNER_FILE = "owner.pid"
_PGID_SUFFIX = ".pgid"
_FAST_SETTINGS = {
    "listen_addresses": f"'{HOST}'",
    "max_connections": "200",  # distributed searches: several workers, each with a pool
    "shared_buffers": "64MB",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "max_wal_size": "1GB",
    "checkpoint_timeout": "1h",
    "autovacuum": "off",
    "jit": "off",
    "log_min_messages": "warning",
}


def _unavailable(message: str) -> NoReturn:
    """Fail (the services are part of the suite), or skip with AUTOPRUNE_SKIP_SERVICES=1."""
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{message} ({SKIP_ENV}=1)")
    pytest.fail(f"{message}; run scripts/setup.sh (or set {SKIP_ENV}=1 to skip these tests)", pytrace=False)


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} is missing)"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (a race remains; callers retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------- PostgreSQL


def _version_key(bindir: Path) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", bindir.parent.name)) or (0,)


def find_postgres_bindir() -> Path | None:
    """The directory with initdb, pg_ctl and postgres: from PATH, else the newest /usr/lib/postgresql/<ver>/bin."""
    initdb = shutil.which("initdb")
    candidates = [Path(initdb).resolve().parent] if initdb else []
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    for d in candidates:
        if all(os.access(d / exe, os.X_OK) for exe in ("initdb", "pg_ctl", "postgres")):
            return d
    return None


def _server_user() -> pwd.struct_passwd | None:
    """The account that runs the server: None for the current one, ``postgres`` when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        _unavailable("running as root, and initdb refuses root, but there is no 'postgres' system user")


def _as_server_user(user: pwd.struct_passwd | None) -> list[str]:
    if user is None:
        return []
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    if not os.access(runuser, os.X_OK):
        _unavailable("running as root needs runuser (util-linux) to start PostgreSQL as 'postgres'")
    return [runuser, "-u", user.pw_name, "--"]


def _server_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def _base_dir(user: pwd.struct_passwd | None) -> Path:
    """Where the server's directory goes: the temp dir, or /tmp if ``postgres`` cannot reach it."""
    base = Path(tempfile.gettempdir())
    if user is not None and not all(p.stat().st_mode & 0o001 for p in (base, *base.parents)):
        base = Path("/tmp")
    return base


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass(frozen=True)
class PostgresServer:
    """A running throwaway PostgreSQL server: loopback only, trust authentication, no durability."""

    bindir: Path
    root: Path
    port: int
    host: str = HOST
    user: str = SUPERUSER

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"  # written by the server: readable by root or its owner

    def url(self, database: str = "postgres", driver: str = "psycopg2") -> str:
        """SQLAlchemy URL of ``database`` on this server."""
        return f"postgresql+{driver}://{self.user}@{self.host}:{self.port}/{database}"

    def connect(self, database: str = "postgres") -> Any:
        """A new psycopg2 connection (autocommit) to ``database``; close it when done."""
        import psycopg2

        conn = psycopg2.connect(host=self.host, port=self.port, user=self.user, dbname=database, connect_timeout=10)
        conn.autocommit = True
        return conn

    def _admin(self, statement: str, name: str) -> None:
        from psycopg2 import sql

        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(sql.SQL(statement).format(sql.Identifier(name)))
        finally:
            conn.close()

    def create_database(self, hint: str = "test") -> str:
        """Create an empty database named after ``hint`` plus a unique suffix; return its URL."""
        stem = re.sub(r"[^a-z0-9_]+", "_", hint.lower()).strip("_")[:40] or "test"
        name = f"{stem}_{uuid.uuid4().hex[:12]}"
        self._admin("CREATE DATABASE {}", name)
        return self.url(name)

    def drop_database(self, url_or_name: str) -> None:
        """Drop a database (by URL or name), disconnecting its remaining sessions."""
        self._admin("DROP DATABASE IF EXISTS {} WITH (FORCE)", url_or_name.rsplit("/", 1)[-1])


def _pg_ctl_stop(bindir: Path, datadir: Path, prefix: list[str]) -> None:
    if not (datadir / "postmaster.pid").exists():
        return
    cmd = [*prefix, str(bindir / "pg_ctl"), "stop", "-D", str(datadir), "-m", "immediate", "-s", "-w", "-t", "30"]
    done = subprocess.run(cmd, env=_server_env(), cwd="/", capture_output=True, timeout=60)
    if done.returncode != 0 and (datadir / "postmaster.pid").exists():  # stop it anyway
        try:
            os.kill(int((datadir / "postmaster.pid").read_text().split()[0]), signal.SIGQUIT)
        except (OSError, ValueError, IndexError):
            pass


def _reap_stale(base: Path, bindir: Path, prefix: list[str]) -> None:
    """Stop and remove servers of earlier test sessions that were killed before their teardown."""
    for root in base.glob(f"{_PREFIX}*"):
        try:
            owner = int((root / _OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not ours, or being set up right now
        if _alive(owner):
            continue
        for pgid_file in root.glob(f"*{_PGID_SUFFIX}"):
            try:
                _kill_group(int(pgid_file.read_text()), signal.SIGKILL)
            except (OSError, ValueError):
                pass
        try:
            _pg_ctl_stop(bindir, root / "data", prefix)
        except (OSError, subprocess.SubprocessError):
            pass
        shutil.rmtree(root, ignore_errors=True)


def _start_postgres(bindir: Path, root: Path, prefix: list[str]) -> PostgresServer:
    env = _server_env()
    datadir = root / "data"
    init = subprocess.run(
        [*prefix, str(bindir / "initdb"), "-D", str(datadir), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
         "--locale=C", "--no-sync", "--no-instructions"],
        env=env, cwd=root, capture_output=True, text=True, timeout=120,
    )
    if init.returncode != 0:
        pytest.fail(f"initdb failed ({init.returncode}):\n{init.stdout}\n{init.stderr}", pytrace=False)
    settings = {**_FAST_SETTINGS, "unix_socket_directories": f"'{root}'"}
    with open(datadir / "postgresql.conf", "a") as f:
        f.write("\n# autoprune test server\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
    log_path = root / "postgres.log"
    for _ in range(5):  # another process may take the free port before the server binds it
        server = PostgresServer(bindir=bindir, root=root, port=free_port())
        logged = log_path.stat().st_size if log_path.exists() else 0
        start = subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "start", "-D", str(datadir), "-l", str(log_path),
             "-w", "-t", "60", "-s", "-o", f"-p {server.port}"],
            env=env, cwd=root, capture_output=True, text=True, timeout=120,
        )
        if start.returncode == 0:
            return server
        try:
            with open(log_path, "rb") as f:
                f.seek(logged)
                new = f.read().decode(errors="replace")
        except OSError:
            new = ""
        if "could not bind" not in new:
            break
    pytest.fail(f"pg_ctl start failed ({start.returncode}): {start.stdout}{start.stderr}\n--- postgres log:\n{_tail(log_path)}", pytrace=False)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server for the session (about 1-2 s to start)."""
    bindir = find_postgres_bindir()
    if bindir is None:
        _unavailable("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH or in /usr/lib/postgresql/*/bin")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        _unavailable("psycopg2 is not installed (the 'postgres' extra)")
    user = _server_user()
    prefix = _as_server_user(user)
    base = _base_dir(user)
    _reap_stale(base, bindir, prefix)
    root = Path(tempfile.mkdtemp(prefix=_PREFIX, dir=base))
    (root / _OWNER_FILE).write_text(str(os.getpid()))
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    try:
        yield _start_postgres(bindir, root, prefix)
    finally:
        try:
            _pg_ctl_stop(bindir, root / "data", prefix)
        finally:
            shutil.rmtree(root, ignore_errors=True)


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
    pgid_file = postgres_server.root / f"mlflow{_PGID_SUFFIX}"
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
        if "address already in use" in _tail(log_path).lower():
            continue
        what = f"exited with code {proc.returncode}" if time.monotonic() < deadline else f"not healthy after {MLFLOW_START_TIMEOUT:.0f} s"
        pytest.fail(f"mlflow server {what}: {' '.join(cmd)}\n--- log:\n{_tail(log_path)}", pytrace=False)
    else:
        pytest.fail(f"mlflow server: no free port after 3 attempts\n--- log:\n{_tail(log_path)}", pytrace=False)
    try:
        yield url
    finally:
        _stop_group(proc)
        pgid_file.unlink(missing_ok=True)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group, SIGKILL whatever is left after 10 s."""
    _kill_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    _kill_group(proc.pid, signal.SIGKILL)
    proc.wait()


__all__ = ["PostgresServer", "find_postgres_bindir", "free_port"]
