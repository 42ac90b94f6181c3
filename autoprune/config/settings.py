"""The one conversion of a validated config into the library's settings objects.

Every command that works from a config (``estimate``, ``search``, ``run``, ``transfer``,
``worker``) gets its :class:`~autoprune.training.baseline.TrainSettings`,
:class:`~autoprune.measure.settings.LatencySettings`, ... from here, so a config field means
the same thing everywhere and a new field needs one line, not one per command.

Where defaults live: in those library dataclasses (see :mod:`autoprune.config.schema`). A
section's fields are copied onto the dataclass field of the same name; fields the library
has and the config does not (``LatencySettings.min_rounds``, ``FinetuneSettings.weight_decay``)
keep their library default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel
from torch import nn

from autoprune.config.schema import ExperimentConfig
from autoprune.errors import ModelError, describe
from autoprune.formats.onnx import onnx_file_check
from autoprune.graph.layers import ExampleInput
from autoprune.graph.safety import ExportCheck
from autoprune.measure.backends import backend_class
from autoprune.measure.settings import LatencySettings
from autoprune.objective.budget import Budget, Reward
from autoprune.objective.proxy import ProxySettings
from autoprune.search.selection import SelectionSettings
from autoprune.training.baseline import TrainSettings
from autoprune.training.finetune import FinetuneSettings

S = TypeVar("S")

#: Fine-tuning between the stages of ``pruning.iterative_steps``: a fifth of an epoch.
RECOVER_EPOCHS = 0.2


def _from_section(cls: type[S], section: BaseModel, **extra: Any) -> S:
    """``cls`` with every field that ``section`` also has copied from it, plus ``extra``."""
    shared = {f.name: getattr(section, f.name) for f in dataclasses.fields(cls) if f.name in type(section).model_fields}
    return cls(**shared, **extra)


def train_settings(cfg: ExperimentConfig) -> TrainSettings:
    """Baseline training: the ``train`` section and the experiment's seed."""
    return _from_section(TrainSettings, cfg.train, seed=cfg.seed)


def proxy_settings(cfg: ExperimentConfig) -> ProxySettings:
    """The accuracy proxy: the ``proxy`` section."""
    return _from_section(ProxySettings, cfg.proxy)


def latency_settings(cfg: ExperimentConfig) -> LatencySettings:
    """Latency measurement during search: the ``latency`` section."""
    return _from_section(LatencySettings, cfg.latency)


def exports_onnx(cfg: ExperimentConfig) -> bool:
    """True when ``autoprune run`` delivers ``model.onnx``.

    That is when ``export.onnx`` or ``export.quantize`` asks for it, when the latency backend
    serves the ONNX file (its ``artifact`` is ``"onnx"``), or for a sentence encoder (proxy
    ``fidelity``: always delivered as ``model.onnx`` beside its tokenizer).

    Raises:
        ConfigError: an unknown backend.
    """
    e = cfg.export
    return bool(e.onnx or e.quantize or backend_class(cfg.latency.backend).artifact == "onnx" or cfg.proxy.metric == "fidelity")


def export_check(cfg: ExperimentConfig) -> ExportCheck | None:
    """The safety net's export check of everything the experiment serves and delivers (:func:`autoprune.graph.safety.verified_graph`).

    The serving runtime's check (:meth:`~autoprune.measure.settings.LatencySettings.serving_check`),
    and, when a run delivers ``model.onnx`` (:func:`exports_onnx`) that the backend does not serve
    itself (e.g. ``export.onnx`` with ``latency.backend: torch``), the ONNX file's check
    (:func:`autoprune.formats.onnx.onnx_file_check`). So a model ``run`` could not deliver is
    refused, or has the units it cannot deliver left dense, before any training or search, not
    when ``run`` exports at the end.

    Returns:
        The check (its ``label`` keys cached verdicts, its ``runtime`` is named by failures), or
        None when nothing but eager PyTorch runs the model.

    Raises:
        ConfigError: an unknown backend, a bad option, or an extra that is not installed.
    """
    serving = latency_settings(cfg).serving_check()
    if not exports_onnx(cfg) or backend_class(cfg.latency.backend).artifact == "onnx":
        return serving
    field = "export.quantize" if cfg.export.quantize else "export.onnx" if cfg.export.onnx else "a sentence encoder's delivery"
    onnx = onnx_file_check(f"ONNX (model.onnx, {field})")
    if serving is None:
        return onnx
    return _both(serving, onnx)


def _both(first: ExportCheck, second: ExportCheck) -> ExportCheck:
    def check(model: nn.Module, example_input: ExampleInput) -> None:
        for part in (first, second):
            try:
                part(model, example_input)
            except Exception as e:
                raise ModelError(f"{getattr(part, 'runtime', 'the serving runtime')}: {describe(e)}") from e

    check.label = f"{getattr(first, 'label', '')}+{getattr(second, 'label', '')}"  # type: ignore[attr-defined]
    check.runtime = f"{getattr(first, 'runtime', '?')} and {getattr(second, 'runtime', '?')}"  # type: ignore[attr-defined]
    return check


def budget(cfg: ExperimentConfig) -> Budget:
    """The budget: the ``budget`` section (its default target is already filled in by the schema)."""
    return _from_section(Budget, cfg.budget)


def reward(cfg: ExperimentConfig) -> Reward:
    """The episode reward: the ``reward`` section."""
    return _from_section(Reward, cfg.reward)


def finetune_settings(cfg: ExperimentConfig) -> FinetuneSettings:
    """Fine-tuning of the pruned model: the ``finetune`` section and the experiment's seed."""
    return _from_section(FinetuneSettings, cfg.finetune, seed=cfg.seed)


def selection_settings(cfg: ExperimentConfig) -> SelectionSettings:
    """Multi-fidelity selection of the search's result: ``search.finalists`` and ``search.finalist_steps``."""
    return _from_section(SelectionSettings, cfg.search)


def recover_settings(cfg: ExperimentConfig) -> FinetuneSettings:
    """The short fine-tuning between iterative pruning stages: :data:`RECOVER_EPOCHS` at ``finetune.lr``."""
    return FinetuneSettings(epochs=RECOVER_EPOCHS, lr=cfg.finetune.lr, seed=cfg.seed)


def round_to(cfg: ExperimentConfig) -> int | None:
    """The channel multiple of surgery: ``pruning.round_to``, with ``auto`` resolved for ``latency.backend``.

    Raises:
        ConfigError: an unknown backend (``auto`` asks it for its multiple).
    """
    value = cfg.pruning.round_to
    return backend_class(cfg.latency.backend).channel_multiple() if value == "auto" else value


def pruning_record(cfg: ExperimentConfig) -> dict[str, Any]:
    """How a found policy is applied, as recorded in its file: ``importance``, ``round_to`` (``auto`` resolved), ``iterative_steps``.

    Raises:
        ConfigError: an unknown backend (``auto`` asks it for its multiple).
    """
    return {"importance": cfg.pruning.importance, "round_to": round_to(cfg), "iterative_steps": cfg.pruning.iterative_steps}


def evaluator_options(cfg: ExperimentConfig) -> dict[str, Any]:
    """Keyword arguments of :class:`~autoprune.objective.evaluator.PolicyEvaluator` after the model and data."""
    p = cfg.pruning
    return {
        "budget": budget(cfg),
        "reward": reward(cfg),
        "proxy": proxy_settings(cfg),
        "latency": latency_settings(cfg),
        "importance": p.importance,
        "round_to": round_to(cfg),
        "max_ratio": p.max_ratio,
        "allow_drop": p.drop_blocks,
        "ignored": tuple(cfg.model.ignore),
        "seed": cfg.seed,
    }


@dataclass(frozen=True)
class Settings:
    """All library settings of one experiment."""

    train: TrainSettings
    proxy: ProxySettings
    latency: LatencySettings
    budget: Budget
    reward: Reward
    finetune: FinetuneSettings
    recover: FinetuneSettings


def library_settings(cfg: ExperimentConfig) -> Settings:
    """The library settings an experiment config describes.

    Args:
        cfg: A validated config (:func:`autoprune.config.load_config`).

    Returns:
        The settings objects, each field taken from the section of the same name.
    """
    return Settings(
        train=train_settings(cfg), proxy=proxy_settings(cfg), latency=latency_settings(cfg), budget=budget(cfg),
        reward=reward(cfg), finetune=finetune_settings(cfg), recover=recover_settings(cfg),
    )


__all__ = [
    "RECOVER_EPOCHS",
    "Settings",
    "budget",
    "evaluator_options",
    "export_check",
    "exports_onnx",
    "finetune_settings",
    "latency_settings",
    "library_settings",
    "proxy_settings",
    "pruning_record",
    "recover_settings",
    "reward",
    "train_settings",
]
