"""A throwaway PostgreSQL server: the one starter of the test suite and of the benchmarks.

    with throwaway_postgres() as pg:                      # tests' settings: no durability, fast
        url = pg.create_database("scale")                 # postgresql+psycopg2://autoprune@127.0.0.1:<port>/scale_<hex>
    with throwaway_postgres(DURABLE_SETTINGS) as pg:      # PostgreSQL's durability defaults (benchmarks)
        ...

Loopback only at a free port, trust authentication, data in a temporary directory removed at
the end. ``initdb`` refuses to run as root, so as root every server command runs as the
``postgres`` system user (``runuser``). Servers left behind by a killed process are stopped by
the next start (the owner's PID is kept in the server's folder; any process group recorded there
in a ``*.pgid`` file, e.g. an MLflow server on the database, is killed with it).

The test fixtures (``tests/services.py``) import this as ``helpers.postgres``; the benchmarks,
run from the repository root, as ``tests.helpers.postgres``. Nothing here depends on pytest:
missing binaries raise :class:`PostgresUnavailable`, a failing server :class:`PostgresError`.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUPERUSER = "autoprune"
HOST = "127.0.0.1"
_PREFIX = "autoprune-pg-"
_OWNER_FILE = "owner.pid"
#: Suffix of the files in a server's folder that name a process group to kill with the server.
PGID_SUFFIX = ".pgid"

#: The tests' server: no durability (fsync, synchronous commit and full-page writes off), no autovacuum.
FAST_SETTINGS: dict[str, str] = {
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
#: The benchmarks' server: PostgreSQL's durability defaults (fsync, synchronous_commit on), so storage
#: timings are those of a normally configured server.
DURABLE_SETTINGS: dict[str, str] = {"listen_addresses": f"'{HOST}'", "max_connections": "100", "log_min_messages": "warning"}


class PostgresUnavailable(RuntimeError):
    """PostgreSQL cannot run here: no server binaries, no psycopg2, or root without a ``postgres`` user."""


class PostgresError(RuntimeError):
    """The server did not initialise or start (the message carries its output and log)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (a race remains; callers retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 60) -> str:
    """The last ``lines`` lines of a log file (a note when it is missing)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} is missing)"


def kill_group(pgid: int, sig: int) -> None:
    """Send ``sig`` to a process group, ignoring one that is gone or not ours."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


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
        raise PostgresUnavailable("running as root, and initdb refuses root, but there is no 'postgres' system user") from None


def _as_server_user(user: pwd.struct_passwd | None) -> list[str]:
    if user is None:
        return []
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    if not os.access(runuser, os.X_OK):
        raise PostgresUnavailable("running as root needs runuser (util-linux) to start PostgreSQL as 'postgres'")
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


@dataclass(frozen=True)
class PostgresServer:
    """A running throwaway PostgreSQL server: loopback only, trust authentication.

    Attributes:
        bindir: The folder of ``pg_ctl``.
        root: The server's folder (data directory, log, owner and ``*.pgid`` files).
        port: Its TCP port on :attr:`host`.
        run_as: The command prefix that runs a server command as the server's user (``runuser ...`` as root).
    """

    bindir: Path
    root: Path
    port: int
    host: str = HOST
    user: str = SUPERUSER
    run_as: tuple[str, ...] = field(default=(), repr=False)

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

    def stop(self) -> None:
        """Stop the server (immediate shutdown) and remove its folder."""
        try:
            _pg_ctl_stop(self.bindir, self.datadir, list(self.run_as))
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


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
    """Stop and remove servers of earlier processes that were killed before they stopped theirs."""
    for root in base.glob(f"{_PREFIX}*"):
        try:
            owner = int((root / _OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not ours, or being set up right now
        if _alive(owner):
            continue
        for pgid_file in root.glob(f"*{PGID_SUFFIX}"):
            try:
                kill_group(int(pgid_file.read_text()), signal.SIGKILL)
            except (OSError, ValueError):
                pass
        try:
            _pg_ctl_stop(bindir, root / "data", prefix)
        except (OSError, subprocess.SubprocessError):
            pass
        shutil.rmtree(root, ignore_errors=True)


def _start(bindir: Path, root: Path, prefix: list[str], settings: Mapping[str, str]) -> PostgresServer:
    env = _server_env()
    datadir = root / "data"
    init = subprocess.run(
        [*prefix, str(bindir / "initdb"), "-D", str(datadir), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
         "--locale=C", "--no-sync", "--no-instructions"],
        env=env, cwd=root, capture_output=True, text=True, timeout=120,
    )
    if init.returncode != 0:
        raise PostgresError(f"initdb failed ({init.returncode}):\n{init.stdout}\n{init.stderr}")
    conf = {**settings, "unix_socket_directories": f"'{root}'"}
    with open(datadir / "postgresql.conf", "a") as f:
        f.write("\n# autoprune throwaway server\n" + "".join(f"{k} = {v}\n" for k, v in conf.items()))
    log_path = root / "postgres.log"
    for _ in range(5):  # another process may take the free port before the server binds it
        server = PostgresServer(bindir=bindir, root=root, port=free_port(), run_as=tuple(prefix))
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
    raise PostgresError(f"pg_ctl start failed ({start.returncode}): {start.stdout}{start.stderr}\n--- postgres log:\n{tail(log_path)}")


def start_postgres(settings: Mapping[str, str] = FAST_SETTINGS) -> PostgresServer:
    """Initialise and start a server in a new temporary folder; :meth:`PostgresServer.stop` stops and removes it.

    Args:
        settings: ``postgresql.conf`` entries (:data:`FAST_SETTINGS` for tests, :data:`DURABLE_SETTINGS`
            to time storage as a normally configured server would).

    Raises:
        PostgresUnavailable: no server binaries, no psycopg2, or root without a ``postgres`` user (run ``scripts/setup.sh``).
        PostgresError: ``initdb`` or ``pg_ctl start`` failed.
    """
    bindir = find_postgres_bindir()
    if bindir is None:
        raise PostgresUnavailable("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH or in /usr/lib/postgresql/*/bin")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        raise PostgresUnavailable("psycopg2 is not installed (the 'postgres' extra)") from None
    user = _server_user()
    prefix = _as_server_user(user)
    base = _base_dir(user)
    _reap_stale(base, bindir, prefix)
    root = Path(tempfile.mkdtemp(prefix=_PREFIX, dir=base))
    (root / _OWNER_FILE).write_text(str(os.getpid()))
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    try:
        return _start(bindir, root, prefix, settings)
    except BaseException:
        _pg_ctl_stop(bindir, root / "data", prefix)
        shutil.rmtree(root, ignore_errors=True)
        raise


@contextlib.contextmanager
def throwaway_postgres(settings: Mapping[str, str] = FAST_SETTINGS) -> Iterator[PostgresServer]:
    """A server for the body of a ``with`` block (:func:`start_postgres`), stopped and removed at its end.

    Raises:
        PostgresUnavailable, PostgresError: as :func:`start_postgres`.
    """
    server = start_postgres(settings)
    try:
        yield server
    finally:
        server.stop()


__all__ = [
    "DURABLE_SETTINGS",
    "FAST_SETTINGS",
    "PGID_SUFFIX",
    "PostgresError",
    "PostgresServer",
    "PostgresUnavailable",
    "find_postgres_bindir",
    "free_port",
    "kill_group",
    "start_postgres",
    "tail",
    "throwaway_postgres",
]
