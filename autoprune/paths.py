"""Check output paths before the work that fills them, so a bad path fails in a second, not after training."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from autoprune.errors import ConfigError


def writable_file(path: str | os.PathLike, option: str) -> Path:
    """Make sure ``path``'s folder exists (creating it) and is writable; return the path.

    Raises:
        ConfigError: naming ``option`` and the path when the folder cannot be created or written.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{option}: {str(path)!r} is a directory; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{option}: cannot create the folder of {str(path)!r} ({e.strerror or e})") from e
    if not os.access(path.parent, os.W_OK):
        raise ConfigError(f"{option}: the folder of {str(path)!r} is not writable")
    return path


def _replace_atomically(path: Path, write: Any) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path`` (removed on failure)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json_atomic(path: str | os.PathLike, document: Any, *, indent: int | None = 2) -> Path:
    """Write ``document`` as JSON to ``path`` atomically (a temporary file, then a rename): a crash never leaves half a file.

    Raises:
        OSError: the folder cannot be written.
        TypeError: ``document`` holds values JSON cannot encode.
    """
    return _replace_atomically(Path(path), lambda tmp: tmp.write_text(json.dumps(document, indent=indent)))


def write_csv_atomic(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]], fieldnames: Sequence[str] | None = None) -> Path:
    """Write ``rows`` as a CSV file with a header, atomically (a temporary file, then a rename).

    Args:
        path: The destination; its folder must exist.
        rows: One mapping per line.
        fieldnames: The columns (default: the keys of the first row). With no rows and no
            field names, the file is empty.

    Raises:
        OSError: the folder cannot be written.
    """
    rows = list(rows)
    columns = list(fieldnames) if fieldnames is not None else (list(rows[0]) if rows else [])

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            if columns:
                w = csv.DictWriter(f, fieldnames=columns)
                w.writeheader()
                w.writerows(rows)

    return _replace_atomically(Path(path), write)
