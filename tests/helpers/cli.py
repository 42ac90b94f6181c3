"""Run ``autoprune ARGV`` in-process from a test, and check a user error (shared by the CLI tests)."""

from __future__ import annotations

import subprocess
from typing import NamedTuple

import pytest

from autoprune.cli import main


class Result(NamedTuple):
    """Exit code (0 for a normal return) and the captured standard output and error."""

    code: int
    out: str
    err: str

    @classmethod
    def of(cls, done: subprocess.CompletedProcess[str]) -> Result:
        """The result of ``python -m autoprune ...`` run as a real process (text mode)."""
        return cls(done.returncode, done.stdout, done.stderr)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> Result:
    """Run ``autoprune ARGV`` in this process; only what this call printed is returned."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    out, err = capsys.readouterr()
    code = info.value.code
    return Result(0 if code is None else code if isinstance(code, int) else 1, out, err)


def assert_user_error(res: Result, *culprits: str, absent: tuple[str, ...] = ()) -> str:
    """Exit code 2, exactly one stderr line ``autoprune: error: ...`` naming every culprit, no traceback; returns the line."""
    assert res.code == 2, f"exit code {res.code}\nstdout: {res.out}\nstderr: {res.err}"
    assert "Traceback" not in res.err + res.out, res.err
    lines = res.err.splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"expected one line on stderr, got:\n{res.err}"
    line = lines[0]
    assert line.startswith("autoprune: error: "), line
    for c in culprits:
        assert c in line, f"{c!r} not in: {line}"
    for a in absent:
        assert a not in line, f"{a!r} should not be in: {line}"
    return line
