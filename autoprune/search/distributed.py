"""Distributed search: Optuna's RDB storage coordinates worker processes; we only start them.

``autoprune search --workers N`` runs one worker in the calling process and starts N-1
``autoprune worker`` processes; ``autoprune worker --storage URL --study NAME`` joins a
study from any machine that reaches the database. The study carries everything a worker
needs as user attributes: the experiment config, the episode budget, and the MLflow run
that collects every worker's trials.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from autoprune.errors import ConfigError, describe
from autoprune.search.optuna_search import unsupported_scheme

log = logging.getLogger(__name__)

CONFIG_ATTR = "autoprune.config"
EPISODES_ATTR = "autoprune.episodes"
RUN_ATTR = "autoprune.mlflow_run_id"
TRACKING_ATTR = "autoprune.tracking_uri"


def publish_study(study: optuna.Study, config: dict[str, Any], episodes: int, *, run: tuple[str, str] | None = None) -> None:
    """Store what workers need in the study: the config, the budget, and the MLflow run (uri, run id)."""
    study.set_user_attr(CONFIG_ATTR, config)
    study.set_user_attr(EPISODES_ATTR, int(episodes))
    if run is not None:
        study.set_user_attr(TRACKING_ATTR, run[0])
        study.set_user_attr(RUN_ATTR, run[1])


@dataclass
class StudyInfo:
    """What a worker reads back from a study."""

    config: dict[str, Any]
    episodes: int
    tracking_uri: str | None
    run_id: str | None


def read_study(storage: str, study_name: str) -> StudyInfo:
    """The config and budget an ``autoprune search`` stored with its study.

    Raises:
        ConfigError: unreachable storage, unknown study, or a study not created by autoprune.
    """
    import sqlalchemy.exc

    if "://" not in storage:
        raise ConfigError(f"--storage: {storage!r} is not a database URL; use e.g. postgresql://user@host/db or sqlite:///study.db")
    try:
        names = optuna.get_all_study_names(storage=storage)
        if study_name not in names:
            raise ConfigError(f"--study: no study {study_name!r} in {storage}; studies there: {', '.join(names) or '(none)'}")
        attrs = optuna.load_study(study_name=study_name, storage=storage).user_attrs
    except (ImportError, ValueError, sqlalchemy.exc.SQLAlchemyError) as e:
        if (why := unsupported_scheme(storage)) is not None:
            raise ConfigError(f"--storage: {why}") from e
        raise ConfigError(f"--storage: cannot open {storage!r} ({describe(e, 200)})") from e
    if CONFIG_ATTR not in attrs:
        raise ConfigError(f"--study: {study_name!r} in {storage} was not created by `autoprune search` (no stored config)")
    return StudyInfo(attrs[CONFIG_ATTR], int(attrs.get(EPISODES_ATTR, 0)), attrs.get(TRACKING_ATTR), attrs.get(RUN_ATTR))


def spawn_workers(storage: str, study_name: str, count: int, *, threads: int, log_dir: Path) -> list[subprocess.Popen]:
    """Start ``count`` ``autoprune worker`` processes on this machine; their output goes to ``log_dir``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "AUTOPRUNE_PROGRESS": ""}
    procs = []
    for i in range(count):
        out = open(log_dir / f"worker-{i + 1}.log", "w")
        cmd = [sys.executable, "-m", "autoprune", "worker", "--storage", storage, "--study", study_name, "--threads", str(threads)]
        procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env))
        out.close()
    log.info("started %d worker process(es) with %d thread(s) each; logs in %s", count, threads, log_dir)
    return procs


def wait_workers(procs: list[subprocess.Popen], *, log_dir: Path | None = None) -> None:
    """Wait for workers to exit; warn (do not fail: their trials are in the study) for those that failed."""
    for i, p in enumerate(procs):
        code = p.wait()
        if code != 0:
            where = f" (see {log_dir / f'worker-{i + 1}.log'})" if log_dir else ""
            log.warning("worker %d exited with code %d%s; its finished trials are kept", i + 1, code, where)


def stop_workers(procs: list[subprocess.Popen], timeout: float = 10.0) -> None:
    """Terminate workers still running (after an error or Ctrl-C in the coordinating process)."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
