"""A lock shared by every worker of one Optuna study, so the trial budget is never overshot.

Workers check "how many trials are done or running?" and then ask for a new trial. Two
workers doing that at the same moment could both start the last trial. Holding this lock
from the check until the new trial is RUNNING in the storage makes the total exact:

- PostgreSQL: a session-level advisory lock (``pg_advisory_lock``), so workers on other
  machines take part;
- SQLite: an ``flock`` on ``<database>.lock`` (an SQLite file is only shared on one machine);
- in-memory studies (one process): no lock.

Other RDB back-ends get no lock; the budget may then be overshot by a trial or two.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import urllib.parse
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _sqlite_path(url: str) -> Path | None:
    """The database file of an ``sqlite:///path`` URL (None for in-memory)."""
    rest = url.split(":///", 1)[1] if ":///" in url else ""
    rest = rest.split("?", 1)[0]
    if not rest or rest == ":memory:":
        return None
    return Path(rest)


class StudyLock:
    """A re-usable, non-reentrant lock named after a study in a storage.

    Args:
        url: The study's storage URL (None: in-memory, no locking).
        study_name: Studies in one storage lock independently.

    Use ``acquire()`` / ``release()`` (``release`` is idempotent), or ``with lock:``.
    """

    def __init__(self, url: str | None, study_name: str) -> None:
        self.url = url
        self.study_name = study_name
        self._held = False
        self._file: Any = None
        self._engine: Any = None
        self._conn: Any = None
        self.kind = "none"
        if url is None:
            return
        scheme = urllib.parse.urlparse(url).scheme.split("+", 1)[0]
        if scheme == "sqlite":
            path = _sqlite_path(url)
            if path is not None:
                self.kind = "flock"
                self._path = path.with_name(path.name + ".lock")
        elif scheme in ("postgresql", "postgres"):
            import sqlalchemy
            from sqlalchemy.pool import NullPool

            self.kind = "advisory"
            self._engine = sqlalchemy.create_engine(url, poolclass=NullPool)
            digest = hashlib.sha256(f"autoprune:{study_name}".encode()).digest()
            self._key = int.from_bytes(digest[:8], "big", signed=True)
        else:
            log.warning("storage %s: no cross-process lock for this back-end; the trial count may overshoot slightly", scheme)

    def acquire(self) -> None:
        """Block until this process holds the lock."""
        if self._held:
            return
        if self.kind == "flock":
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self._path, "a+")
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)
        elif self.kind == "advisory":
            import sqlalchemy

            self._conn = self._engine.connect()
            self._conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self._key})
        self._held = True

    def release(self) -> None:
        """Release the lock if held (safe to call more than once)."""
        if not self._held:
            return
        self._held = False
        if self.kind == "flock" and self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None
        elif self.kind == "advisory" and self._conn is not None:
            import sqlalchemy

            try:
                self._conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
            finally:
                self._conn.close()  # closing the session frees the lock in any case
                self._conn = None

    def __enter__(self) -> StudyLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def close(self) -> None:
        """Release and dispose of the database engine."""
        self.release()
        if self._engine is not None:
            self._engine.dispose()
