"""Where MLflow data lives: resolve and check tracking URIs, and keep MLflow's own output quiet.

Used by :mod:`autoprune.tracking.tracker` (the runs) and :mod:`autoprune.tracking.artifacts` (downloads).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from mlflow.exceptions import MlflowException

from autoprune.errors import ConfigError, one_line

log = logging.getLogger(__name__)

_DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
_OTHER_SCHEMES = ("file", "http", "https", "databricks", "databricks-uc", "uc")
_ALLOWED_URIS = "sqlite:///path/mlflow.db, file:///dir, http(s)://host:port, postgresql://..., mysql://..., databricks"


def quiet_mlflow() -> None:
    """MLflow and alembic log every migration and download at INFO; keep their warnings only."""
    for name in ("mlflow", "alembic"):
        logger = logging.getLogger(name)
        if logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)


@contextlib.contextmanager
def no_progress_bars() -> Iterator[None]:
    """Hide MLflow's artifact-download progress bar unless the user asked for it."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    if key in os.environ:
        yield
        return
    os.environ[key] = "false"
    try:
        yield
    finally:
        os.environ.pop(key, None)



def mlflow_message(e: MlflowException) -> str:
    return one_line(getattr(e, "message", None) or e)


# ----------------------------------------------------------------------- URIs


def resolve_tracking_uri(uri: str | None, *, reach: bool = True) -> str:
    """Validate a tracking URI and return it in absolute form.

    Args:
        uri: ``sqlite:///path.db``, ``file:///dir``, ``http(s)://host:port``,
            ``postgresql://...``, ``mysql://...``, ``databricks``; None means
            ``sqlite:///<current directory>/mlflow.db``.
        reach: Also contact an HTTP server or database (up to 3 seconds each). False checks only
            what needs no network: the scheme and, for local stores, the path (before any work starts).

    Returns:
        The URI; SQLite paths are made absolute.

    Raises:
        ConfigError: unknown scheme, a SQLite or file location that is missing or not
            writable (or a file there that is not an SQLite database), or an HTTP server or
            database that does not answer within 3 seconds.
    """
    if uri is None:
        return _check_sqlite(f"sqlite:///{Path.cwd() / 'mlflow.db'}", "sqlite")
    if not isinstance(uri, str) or not uri.strip():
        raise ConfigError(f"tracking.uri: {uri!r} is not allowed; allowed: {_ALLOWED_URIS}, or null for ./mlflow.db")
    uri = uri.strip()
    try:
        scheme = urllib.parse.urlparse(uri).scheme.lower()
    except ValueError as e:  # e.g. an unclosed '[' of an IPv6 host
        raise ConfigError(f"tracking.uri: {uri!r} is not a valid URI ({e}); allowed: {_ALLOWED_URIS}") from e
    base = scheme.split("+", 1)[0]
    if uri in ("databricks", "databricks-uc") or uri.startswith(("databricks://", "databricks-uc://")):
        return uri
    if not scheme or (base not in _DB_SCHEMES and scheme not in _OTHER_SCHEMES):
        what = "has no scheme" if not scheme else f"has unsupported scheme {scheme!r}"
        raise ConfigError(f"tracking.uri: {uri!r} {what}; allowed: {_ALLOWED_URIS}")
    if base == "sqlite":
        return _check_sqlite(uri, scheme)
    if scheme == "file":
        return _check_file(uri)
    if not reach:
        return uri
    if scheme in ("http", "https"):
        return _check_http(uri)
    if base in _DB_SCHEMES:
        return _check_database(uri, base)
    return uri


def _check_sqlite(uri: str, scheme: str) -> str:
    prefix = f"{scheme}:///"
    if not uri.lower().startswith(prefix):
        raise ConfigError(f"tracking.uri: {uri!r} is not a SQLite file URI; write sqlite:///relative/path.db or sqlite:////absolute/path.db")
    raw = urllib.parse.unquote(uri[len(prefix):].split("?", 1)[0])
    if raw in ("", ":memory:"):
        raise ConfigError(f"tracking.uri: {uri!r} names no database file; an in-memory database would lose every run")
    path = Path(raw).expanduser().absolute()
    if not path.parent.is_dir():
        raise ConfigError(f"tracking.uri: {uri!r}: directory {path.parent} does not exist; create it or choose another path")
    if path.exists() and (not path.is_file() or not os.access(path, os.R_OK | os.W_OK)):
        raise ConfigError(f"tracking.uri: {uri!r}: {path} is not a readable and writable file")
    if path.is_file() and path.stat().st_size > 0:
        with path.open("rb") as f:
            header = f.read(16)
        if header != b"SQLite format 3\x00":
            raise ConfigError(f"tracking.uri: {uri!r}: {path} exists and is not an SQLite database; "
                              "choose another file name (MLflow creates it) or move that file away")
    if not path.exists() and not os.access(path.parent, os.W_OK | os.X_OK):
        raise ConfigError(f"tracking.uri: {uri!r}: directory {path.parent} is not writable")
    return f"{scheme}:///{path}"


def _check_file(uri: str) -> str:
    parsed = urllib.parse.urlparse(uri)
    if parsed.netloc not in ("", "localhost"):
        raise ConfigError(f"tracking.uri: {uri!r}: remote file URIs are not supported; use file:///absolute/dir")
    path = Path(urllib.request.url2pathname(parsed.path))
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"tracking.uri: {uri!r}: {existing or path} is not a writable directory")
    return uri


def _check_database(uri: str, base: str, timeout: int = 3) -> str:
    """Connect once to a PostgreSQL / MySQL / MSSQL store, so a wrong URL fails here in one line, not in MLflow."""
    import sqlalchemy

    try:
        shown = sqlalchemy.engine.make_url(uri).render_as_string(hide_password=True)
    except (sqlalchemy.exc.ArgumentError, ValueError) as e:
        raise ConfigError(f"tracking.uri: {base} URI is malformed ({one_line(e, 120)}); expected {base}://user@host:port/database") from e
    connect_args = {"connect_timeout": timeout} if base in ("postgresql", "mysql") else {}
    try:
        engine = sqlalchemy.create_engine(uri, connect_args=connect_args, poolclass=sqlalchemy.pool.NullPool)
    except ImportError as e:  # the dialect's default driver is not installed
        hint = "install the driver"
        if base == "postgresql" and "+" not in uri.split("://", 1)[0]:
            hint = ("plain postgresql:// means psycopg 3 to SQLAlchemy; write postgresql+psycopg2://... "
                    "(psycopg2 comes with pip install 'autoprune[postgres]') or pip install 'psycopg[binary]'")
        elif base == "postgresql":
            hint = "install it with pip install 'autoprune[postgres]'"
        raise ConfigError(f"tracking.uri: {shown!r} needs a database driver that is not installed ({one_line(e, 120)}); {hint}") from e
    except (sqlalchemy.exc.ArgumentError, ValueError, TypeError) as e:  # unknown driver, bad option
        raise ConfigError(f"tracking.uri: {shown!r} is not usable ({one_line(e, 160)})") from e
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.SQLAlchemyError as e:
        reason = one_line(getattr(e, "orig", None) or e, 160)
        raise ConfigError(f"tracking.uri: cannot connect to {shown} ({reason}); start the database server or fix the URI") from e
    finally:
        engine.dispose()
    return uri


def _check_http(uri: str, timeout: float = 3.0) -> str:
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="GET"), timeout=timeout):
            pass
    except urllib.error.HTTPError:
        return uri  # the server answered, if only with an error status: it is reachable
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise ConfigError(
            f"tracking.uri: cannot reach {uri} ({one_line(reason, 120)}); start the server "
            "(e.g. `mlflow server --backend-store-uri sqlite:///mlflow.db`) or set tracking.uri to a sqlite:/// file"
        ) from e
    return uri


def sqlite_file(uri: str) -> Path | None:
    scheme = urllib.parse.urlparse(uri).scheme.lower()
    if scheme.split("+", 1)[0] != "sqlite":
        return None
    return Path(urllib.parse.unquote(uri[len(f"{scheme}:///"):].split("?", 1)[0]))


def artifact_root(uri: str, experiment: str) -> str | None:
    """For a SQLite store: artifacts beside the database (MLflow would use ./mlruns of the current directory)."""
    db = sqlite_file(uri)
    if db is None:
        return None
    folder = re.sub(r"[^A-Za-z0-9_.-]", "_", experiment) or "experiment"
    return (db.parent / "mlartifacts" / folder).as_uri()


# ----------------------------------------------------------------------- tracker
