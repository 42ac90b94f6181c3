"""The tiny experiment: a config an end-to-end test can run in seconds, with keyword overrides.

An MLP on scikit-learn digits under a MAC budget (feasibility is exact, so a search's outcome
does not depend on how loaded the machine is), timed on one thread, 6 Optuna episodes, one
fine-tuning epoch. A test overrides only what it is about::

    cfg = parse_config(tiny_experiment(tmp_path, budget={"target": 0.01}))
    write_experiment(tmp_path / "exp.yaml", tiny_experiment(name="bad", search={"searcher": "random"}))
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml


def merge(cfg: Mapping[str, Any], **sections: Any) -> dict[str, Any]:
    """A copy of ``cfg`` with ``sections`` merged in (``cfg`` is not modified).

    A mapping updates the section key by key (nested mappings likewise), a section given as
    None is left out (the library's defaults apply), anything else replaces the value.
    """
    out = copy.deepcopy(dict(cfg))
    for key, value in sections.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_update(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _deep_update(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = _deep_update(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) else copy.deepcopy(value)
    return out


def tiny_experiment(tmp_path: Path | None = None, /, **sections: Any) -> dict[str, Any]:
    """The tiny experiment's config mapping, with ``sections`` merged in (see :func:`merge`).

    Args:
        tmp_path: Where it writes: results in ``tmp_path/out``, MLflow in ``tmp_path/mlflow.db``.
            None: the defaults relative to the working directory (``runs/<name>``, ``./mlflow.db``).
        **sections: Overrides, by top-level key (``name``, ``budget``, ``search``, ...).
    """
    cfg: dict[str, Any] = {
        "name": "tiny",
        "model": {"name": "mlp"},
        "data": {"name": "digits"},
        "train": {"epochs": 3, "batch_size": 64, "lr": 0.05, "augment": False},
        "budget": {"metric": "macs", "target": 0.6},
        "latency": {"threads": 1, "rounds": 5},
        "proxy": {"bn_batches": 2, "val_samples": 200},
        "search": {"searcher": "optuna", "episodes": 6},
        "finetune": {"epochs": 1, "lr": 0.01},
    }
    if tmp_path is not None:
        cfg["output_dir"] = str(tmp_path / "out")
        cfg["tracking"] = {"uri": f"sqlite:///{tmp_path}/mlflow.db"}
    return merge(cfg, **sections)


def write_experiment(path: Path, cfg: Mapping[str, Any]) -> Path:
    """Write ``cfg`` as a YAML config file at ``path``; returns ``path``."""
    path.write_text(yaml.safe_dump(dict(cfg), sort_keys=False))
    return path
