"""Shared helpers of the benchmarks: machine/library header, markdown tables and the goals report."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent.parent / "results"
LIBS = ("torch", "torch-pruning", "gymnasium", "stable-baselines3", "optuna", "mlflow", "numpy")


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "-"


def git_commit() -> str:
    """The short hash of the checkout the benchmark runs from ("" outside a git checkout)."""
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()


def command() -> str:
    """The command line that started this process: ``python -m experiments.bench.NAME ARGS...``.

    The module name comes from ``__main__``'s spec (set by ``python -m``); a process started
    otherwise (a file path, ``python -c``) is shown by the path of ``sys.argv[0]``.
    """
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    module = spec.name.removesuffix(".__main__") if spec is not None and spec.name else None  # a package's __main__ runs as the package
    program = ["-m", module] if module else [os.path.relpath(sys.argv[0])]
    return "python " + " ".join(shlex.quote(a) for a in [*program, *sys.argv[1:]])


def header(title: str, threads: int | None = None) -> str:
    """Markdown header: command, date, library versions, machine (cores, threads)."""
    import torch

    from autoprune.measure.runtime_table import machine_id

    cpu = machine_id()["cpu"]
    libs = ", ".join(f"{n} {_version(n)}" for n in LIBS)
    return (
        f"# {title}\n\n"
        f"- command: `{command()}`\n"
        f"- date: {_dt.datetime.now(_dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}\n"
        f"- machine: {os.cpu_count()} cores ({cpu}); torch intra-op threads {threads or torch.get_num_threads()}\n"
        f"- python {platform.python_version()}; {libs}\n\n"
    )


def zoo_model(cfg: Any, baseline: Any) -> Any:
    """How a fresh process rebuilds the experiment's model (:class:`autoprune.measure.fresh.ZooModel`)."""
    from autoprune.measure.fresh import ZooModel

    data = baseline.data
    return ZooModel(cfg.model.name, in_channels=data.in_channels, num_classes=data.num_classes, input_size=data.input_size)


def table(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A markdown table; floats get 3-4 significant digits."""

    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Goal:
    """One goal of a benchmark and what the run measured.

    Attributes:
        goal: What is asked, with its threshold (``searched >= uniform + 1.0 point``).
        value: The measured value, formatted (``+1.35 pts``).
        met: Whether it is met; None for a figure reported beside the goals without a verdict.
    """

    goal: str
    value: str
    met: bool | None

    def line(self) -> str:
        """``- goal: value: met`` (``**not met**``; no verdict when ``met`` is None)."""
        verdict = "" if self.met is None else (": met" if self.met else ": **not met**")
        return f"- {self.goal}: {self.value}{verdict}"


def goals_report(goals: Iterable[Goal], heading: str | None = "## Goals") -> str:
    """The goals as markdown, one line each (:meth:`Goal.line`), under ``heading`` (None: the lines only)."""
    lines = "".join(g.line() + "\n" for g in goals)
    return f"{heading}\n\n{lines}" if heading else lines


def write(name: str, text: str, *, append: bool = False) -> Path:
    """Write (or append to) ``experiments/results/<name>``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    with path.open("a" if append else "w") as f:
        f.write(text)
    return path
