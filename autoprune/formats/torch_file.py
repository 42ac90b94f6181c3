"""Read a ``torch.save`` file safely and say, in one line, what is wrong with one that cannot be read.

Checkpoints and pruned-model files are read with ``torch.load(weights_only=True)``, which
never unpickles code. When that fails, PyTorch's own message is often empty (``EOFError`` on
a 0-byte file) or about zip internals; :func:`load_torch_file` names the file and the kind of
damage instead: empty, truncated, not a PyTorch file, or holding pickled objects.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from autoprune.errors import ModelError, describe

#: First bytes of a zip archive (the format of ``torch.save`` since PyTorch 1.6).
_ZIP_MAGIC = b"PK\x03\x04"


def damage(path: Path) -> str | None:
    """What is wrong with the bytes of ``path`` as a ``torch.save`` file, or None if they look whole.

    Args:
        path: An existing file.

    Returns:
        ``"the file is empty (0 bytes)"``, ``"the file is truncated (...)"``, ``"the file is not a
        PyTorch file (...)"``, or None.
    """
    size = path.stat().st_size
    if size == 0:
        return "the file is empty (0 bytes)"
    with path.open("rb") as f:
        head = f.read(4)
    if head == _ZIP_MAGIC:
        if not zipfile.is_zipfile(path):
            return f"the file is truncated ({size:,} bytes, the end of its zip archive is missing); write it again"
        return None
    return "the file is not a PyTorch file (it does not start like one written by torch.save)"


def load_torch_file(path: str | Path, *, context: str) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with one-line errors that name the file.

    Args:
        path: The file (it must exist; callers check and name their option).
        context: How messages start, naming the file and what it should be, e.g.
            ``"checkpoint: cannot load 'base.pt'"``.

    Returns:
        The loaded object (plain containers of tensors and scalars).

    Raises:
        ModelError: ``"<context>: <why>"`` for an empty, truncated or foreign file,
            or one that holds pickled Python objects (which are never loaded).
    """
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if (why := damage(path)) is None:
            found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
            why = f"the file holds pickled Python objects{f' ({found.group(1)})' if found else ''}, which are never loaded"
        raise ModelError(f"{context}: {why}") from e
    except Exception as e:  # EOFError, zip errors of truncated files, KeyError of junk bytes, OSError
        why = damage(path) or f"the file is corrupt ({type(e).__name__}: {describe(e, 160)})"
        raise ModelError(f"{context}: {why}") from e


__all__ = ["damage", "load_torch_file"]
