"""A throwaway PostgreSQL server for benchmarks (the same recipe as the test fixtures in ``tests/services.py``).

    with throwaway_postgres() as pg:
        url = pg.create_database("scale")     # postgresql+psycopg2://autoprune@127.0.0.1:<port>/scale_<hex>

Loopback only, trust authentication, a temporary data directory removed at the end. Unlike the
test server it keeps PostgreSQL's durability defaults (fsync, synchronous_commit on), so storage
timings are those of a normally configured server. As root, the server runs as the ``postgres``
system user (``initdb`` refuses root).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

USER = "autoprune"
HOST = "127.0.0.1"
SETTINGS = {"listen_addresses": f"'{HOST}'", "max_connections": "100", "log_min_messages": "warning"}


def find_bindir() -> Path:
    """initdb, pg_ctl and postgres: from PATH, else the newest /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("initdb")
    candidates = [Path(found).resolve().parent] if found else []
    version = lambda p: tuple(int(x) for x in re.findall(r"\d+", p.parent.name)) or (0,)  # noqa: E731
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for d in candidates:
        if all(os.access(d / exe, os.X_OK) for exe in ("initdb", "pg_ctl", "postgres")):
            return d
    raise RuntimeError("PostgreSQL server binaries not found (run scripts/setup.sh)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Postgres:
    root: Path
    port: int

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://{USER}@{HOST}:{self.port}/{database}"

    def create_database(self, hint: str = "bench") -> str:
        import psycopg2

        name = f"{re.sub(r'[^a-z0-9_]+', '_', hint.lower())[:40]}_{uuid.uuid4().hex[:8]}"
        conn = psycopg2.connect(host=HOST, port=self.port, user=USER, dbname="postgres")
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url(name)


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[Postgres]:
    """Start a PostgreSQL server on a free loopback port; stop it and delete its data on exit."""
    bindir = find_bindir()
    prefix: list[str] = []
    owner = None
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        prefix = [shutil.which("runuser") or "/usr/sbin/runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="autoprune-bench-pg-", dir="/tmp"))
    if owner is not None:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"LC_ALL": "C"}
    data = root / "data"
    try:
        subprocess.run([*prefix, str(bindir / "initdb"), "-D", str(data), "-U", USER, "--auth=trust", "-E", "UTF8",
                        "--locale=C", "--no-instructions"], env=env, cwd=root, check=True, capture_output=True, timeout=120)
        with open(data / "postgresql.conf", "a") as f:
            f.write("".join(f"{k} = {v}\n" for k, v in {**SETTINGS, "unix_socket_directories": f"'{root}'"}.items()))
        for _ in range(5):
            port = _free_port()
            started = subprocess.run([*prefix, str(bindir / "pg_ctl"), "start", "-D", str(data), "-l", str(root / "log"),
                                      "-w", "-t", "60", "-s", "-o", f"-p {port}"], env=env, cwd=root, capture_output=True, timeout=120)
            if started.returncode == 0:
                break
        else:
            raise RuntimeError(f"pg_ctl start failed: {started.stderr.decode(errors='replace')}")
        try:
            yield Postgres(root, port)
        finally:
            subprocess.run([*prefix, str(bindir / "pg_ctl"), "stop", "-D", str(data), "-m", "immediate", "-s", "-w"],
                           env=env, cwd=root, capture_output=True, timeout=60)
    finally:
        shutil.rmtree(root, ignore_errors=True)
