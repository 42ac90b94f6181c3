"""Check output paths before the work that fills them, so a bad path fails in a second, not after training."""

from __future__ import annotations

import json
import os
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


def write_json_atomic(path: str | os.PathLike, document: Any, *, indent: int | None = 2) -> Path:
    """Write ``document`` as JSON to ``path`` atomically (a temporary file, then a rename): a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(document, indent=indent))
    tmp.replace(path)
    return path
