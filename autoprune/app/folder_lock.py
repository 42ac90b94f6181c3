"""One output folder, one run: a lock on ``output_dir`` held by the process that writes it.

Two ``autoprune run`` of one config at once would share one Optuna study and overwrite each
other's ``policy.json``, ``history.csv`` and ``model.*``. A command that writes ``output_dir``
(``run``, ``search``) therefore holds an ``flock`` on ``<output_dir>/.autoprune.lock``, a file
naming its PID and command, until it ends. A second command on the folder is refused in one line
naming the holder's PID and how to resume. The kernel releases an ``flock`` when its process dies,
so a lock file left by a killed process is taken over, with a warning naming that PID.

The lock is re-entrant within a process (``run`` holds it while its search takes it again).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from autoprune.errors import ConfigError

log = logging.getLogger(__name__)

#: The lock file in an experiment's output folder.
LOCK_FILE = ".autoprune.lock"

_held: dict[Path, list[Any]] = {}  # folder -> [open lock file, depth] of the locks this process holds


def _holder(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _acquire(folder: Path, command: str) -> Any:
    path = folder / LOCK_FILE
    while True:
        f = open(path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            who = _holder(path)
            pid, cmd = who.get("pid", "?"), who.get("command") or "another autoprune command"
            raise ConfigError(
                f"output_dir: {str(folder)!r} is in use by PID {pid} ({cmd}); wait for it to end, or stop it "
                f"(Ctrl-C, or kill {pid}) and run the same command again to continue where it stopped"
            ) from None
        try:
            same = os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        f.close()  # the holder removed the file between our open and our lock: lock the new one
    previous = _holder(path)
    if previous.get("pid") not in (None, os.getpid()):
        state = "no longer running" if not _alive(previous.get("pid")) else "did not hold it"
        log.warning("output_dir: took over the lock of %s left by PID %s (%s), which is %s",
                    folder, previous.get("pid"), previous.get("command", "?"), state)
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"pid": os.getpid(), "command": command}))
    f.flush()
    return f


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, *, command: str | None = None) -> Iterator[Path]:
    """Hold the lock of ``folder`` (an existing directory) for the body; re-entrant within this process.

    Args:
        folder: The output folder.
        command: What the lock file says holds it (default: this process's command line).

    Yields:
        The lock file's path.

    Raises:
        ConfigError: another live process holds it: ``output_dir: '...' is in use by PID N (...)``.
    """
    key = Path(folder).resolve()
    entry = _held.get(key)
    if entry is None:
        if command is None:
            command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "autoprune"
        entry = _held[key] = [_acquire(key, command), 0]
    entry[1] += 1
    try:
        yield key / LOCK_FILE
    finally:
        entry[1] -= 1
        if entry[1] == 0:
            del _held[key]
            with contextlib.suppress(OSError):
                os.unlink(key / LOCK_FILE)  # before unlocking: a waiting process then locks a new file
            entry[0].close()


__all__ = ["LOCK_FILE", "folder_lock"]
