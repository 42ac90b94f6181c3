"""The sections of an experiment config (pydantic): each section's fields, defaults (read from the library settings) and checks.

:class:`autoprune.config.schema.ExperimentConfig` holds one of each. Every section forbids
unknown keys, so a typo is an error rather than a silently ignored setting; a field that names
something is typed by its rule in :mod:`autoprune.config.names`.
"""

from __future__ import annotations

import re
import warnings
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from autoprune.config.names import BackendName, DataName, ImportanceName, ModelName, ModeName, SamplerName, SearcherName, not_allowed
from autoprune.graph.importance import DEFAULT_IMPORTANCE
from autoprune.measure.backends import backend_option_names
from autoprune.measure.settings import LatencySettings
from autoprune.objective.budget import Budget, Reward
from autoprune.objective.evaluator import DEFAULT_MAX_RATIO
from autoprune.objective.proxy import ProxySettings
from autoprune.search.selection import SelectionSettings
from autoprune.training.baseline import TrainSettings
from autoprune.training.finetune import FinetuneSettings

_RDB_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]*(\+[A-Za-z0-9_]+)?://")  # dialect[+driver]://...


class Section(BaseModel):
    """A config section: unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")


def combination(message: str) -> PydanticCustomError:
    """An error about several fields together; ``message`` names them and their values."""
    return PydanticCustomError("invalid_combination", message)  # no context: never formatted


class ModelConfig(Section):
    """The model to prune.

    Attributes:
        name: A zoo model (``resnet20``, ``resnet32``, ``resnet56``, ``vgg_small``,
            ``mobilenetv2``, ``mlp``) or a ``"package.module:factory"`` reference, called with
            ``in_channels=``, ``num_classes=`` and ``input_size=``; or a pretrained sentence
            encoder (needs a text data set): ``minilm`` or ``hf:/path/to/folder`` (any local
            BERT-family encoder, :mod:`autoprune.zoo.hf`); or a decoder LLM: ``smollm2`` or
            ``hf:/path/to/folder`` of a Llama, Qwen2 or Mistral causal LM (:mod:`autoprune.zoo.decoder`).
        checkpoint: Weights to start from. None: the cached baseline, trained once with the
            ``train`` section when missing (an encoder is used as it is: no checkpoint, no training).
        ignore: Module names (as in ``model.named_modules()``) that are never pruned.
    """

    name: ModelName
    checkpoint: str | None = None
    ignore: list[str] = Field(default_factory=list)


class DataConfig(Section):
    """The data set.

    Attributes:
        name: ``fashion_mnist``, ``digits`` or a ``"package.module:factory"`` reference
            returning an :class:`autoprune.zoo.DataBundle`; or the text data set ``fortunes``
            (Debian's quotations, :mod:`autoprune.zoo.text`) for a sentence encoder.
        data_dir: Where Fashion-MNIST's IDX files are (None: ``$AUTOPRUNE_DATA``, then
            ``/usr/share/datasets/fashion-mnist``); for ``fortunes``, a folder of ``%``-separated
            files (None: ``/usr/share/games/fortunes``). A decoder LLM's default is ``fortunes``.
        val_fraction: Share of the training set held out for validation; the search only
            ever scores on it, the test split is kept for the final result.
        max_length: Text only: tokens per sentence at most (special tokens included), also the
            sequence length at which latency is measured; at most the encoder's positions. For a
            decoder LLM: tokens per block of contiguous text (calibration, KL, perplexity,
            distillation), at most the model's context.
        limit: Text only: keep the first ``limit`` sentences of each split (null: all), e.g. a
            small real subset for a quick run.
    """

    name: DataName = "fashion_mnist"
    data_dir: str | None = None
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    max_length: int = Field(128, ge=2)
    limit: int | None = Field(None, ge=3)


class TrainConfig(Section):
    """Training of the dense baseline, used only when no checkpoint exists yet (defaults: :class:`TrainSettings`)."""

    epochs: int = Field(TrainSettings.epochs, ge=1)
    batch_size: int = Field(TrainSettings.batch_size, ge=1)
    lr: float = Field(TrainSettings.lr, gt=0.0)
    weight_decay: float = Field(TrainSettings.weight_decay, ge=0.0)
    augment: bool = TrainSettings.augment


class ProxyConfig(Section):
    """The fast accuracy proxy used during search (see :mod:`autoprune.objective.proxy`).

    Attributes:
        bn_batches: Training batches to re-estimate BatchNorm statistics after pruning (0: off).
        bn_batch_size: Size of those batches.
        val_samples: Validation samples (sentences, for fidelity) scored per candidate (null: the whole split).
        metric: ``accuracy`` (classifiers: top-1 after adaptive BN), ``fidelity`` (sentence
            encoders, label-free: the mean of the cosine similarity to the dense embeddings and
            the 10-nearest-neighbour agreement, :mod:`autoprune.objective.proxies`) or ``kl``
            (decoder LLMs: ``1 / (1 + KL)`` of the next-token distribution to the dense model's on
            validation blocks, :class:`autoprune.objective.lm_fidelity.KLProxy`). Null: the one
            the model calls for.
        neighbours: ``fidelity``: neighbours compared per sentence.
    """

    bn_batches: int = Field(ProxySettings.bn_batches, ge=0)
    bn_batch_size: int = Field(ProxySettings.bn_batch_size, ge=1)
    val_samples: int | None = Field(ProxySettings.val_samples, ge=1)
    metric: Literal["accuracy", "fidelity", "kl"] | None = None
    neighbours: int = Field(ProxySettings.neighbours, ge=1)


class LatencyConfig(Section):
    """How latency is measured (see :mod:`autoprune.measure.latency`; defaults: :class:`LatencySettings`).

    While an episode runs, the environment clips actions with the latency lookup table; the
    reward is always measured.

    Attributes:
        backend: A latency backend in :data:`autoprune.measure.backends.BACKENDS` (``torch``
            eager, ``onnxruntime`` with the ``onnx`` extra, or one registered from Python) or
            a ``"package.module:Class"`` reference.
        batch_size: Inference batch size timed.
        threads: Intra-op threads, fixed while timing; at most the CPUs this process may use
            (checked before any work starts, see :mod:`autoprune.config.machine`).
        warmup: Untimed (dense, candidate) pairs before each candidate is timed.
        rounds: Timed rounds (the maximum when ``rel_ci`` is set).
        rel_ci: Stop early once the 95% confidence half-width relative to the median is at
            most this (null: always time ``rounds`` rounds).
        backend_options: The backend's own settings by name, passed to it as keywords and
            recorded with every result (``onnxruntime``: ``spinning``, ``graph_optimization``,
            ``thread_pool``; ``openvino``: e.g. ``performance_hint``, ``precision``; ``torch``:
            none). Names are checked against what the chosen backend accepts, values when the
            backend is built (before any search starts). Empty: the backend's serving defaults.
        table_cache: Reuse latency-table measurements across runs and models (eager: per-layer timings
            keyed by layer spec, backend settings, versions and CPU; serving runtimes: fitted tables per
            architecture, and the timed calibration variants pooled into the fit of a model made of the
            same layer specs) from ``$AUTOPRUNE_CACHE/latency-tables``; false: measure everything and write nothing.
        predictor: Removed: only ``table`` (what was always used) is still accepted, from
            older configs; it is not written back.
        mode: Decoder LLMs only (ignored for other models): ``decode`` (tokens per second of
            ``new_tokens`` greedy steps from a KV cache holding the prompt) or ``prefill`` (one
            pass over a prompt of ``prompt_tokens`` tokens); the budget is a fraction of the dense
            model's time in this mode.
        prompt_tokens: Decoder LLMs only: prompt length timed (batch 1), at most ``data.max_length``.
        new_tokens: Decoder LLMs only: tokens generated per ``decode`` call.
    """

    backend: BackendName = LatencySettings.backend
    batch_size: int = Field(LatencySettings.batch_size, ge=1)
    threads: int = Field(LatencySettings.threads, ge=1)
    warmup: int = Field(LatencySettings.warmup, ge=0)
    rounds: int = Field(LatencySettings.rounds, ge=1)
    rel_ci: float | None = Field(LatencySettings.rel_ci, gt=0.0)
    backend_options: dict[str, Any] | None = LatencySettings.backend_options
    table_cache: bool = LatencySettings.table_cache
    predictor: str | None = Field(None, exclude=True)
    mode: ModeName = LatencySettings.mode
    prompt_tokens: int = Field(LatencySettings.prompt_tokens, ge=1)
    new_tokens: int = Field(LatencySettings.new_tokens, ge=1)

    @field_validator("predictor")
    @classmethod
    def _removed_predictor(cls, v: str | None) -> None:
        if v not in (None, "table"):
            raise not_allowed("only 'table' (the environment always clips with the latency lookup table and the "
                               "reward is always measured; 'measured' was never implemented): delete latency.predictor")
        return None

    @model_validator(mode="after")
    def _known_backend_options(self) -> LatencyConfig:
        allowed = backend_option_names(self.backend)
        unknown = [k for k in self.backend_options or {} if allowed is not None and k not in allowed]
        if unknown:
            raise combination(
                f"backend_options: backend {self.backend!r} has no option {unknown[0]!r}; allowed: {', '.join(allowed) or 'none'}"
            )
        return self

    def backend_info(self) -> dict[str, Any]:
        """Where latency is measured (backend, its options, batch size, threads): recorded with every found policy."""
        return {"name": self.backend, "batch_size": self.batch_size, "threads": self.threads, "options": dict(self.backend_options or {})}


class BudgetConfig(Section):
    """The resource budget: set exactly one of ``target`` and ``target_ms``.

    Attributes:
        metric: ``latency`` (measured on ``latency.backend``) or ``macs``.
        target: Allowed fraction of the dense model's metric, in (0, 1]. The default
            (``Budget.target``, 0.5) applies when neither ``target`` nor ``target_ms`` is given.
        target_ms: Allowed absolute latency in milliseconds (``metric: latency`` only).
    """

    metric: Literal["latency", "macs"] = Budget.metric
    target: float | None = Field(None, gt=0.0, le=1.0)
    target_ms: float | None = Field(None, gt=0.0)

    @model_validator(mode="after")
    def _one_target(self) -> BudgetConfig:
        if self.target is not None and self.target_ms is not None:
            raise combination(
                f"target={self.target!r} and target_ms={self.target_ms!r} are both set; set exactly one "
                "(target: fraction of dense, target_ms: milliseconds) and the other to null"
            )
        if self.target_ms is not None and self.metric != "latency":
            raise combination(
                f"target_ms={self.target_ms!r} needs metric 'latency', not {self.metric!r}; "
                "for metric 'macs' set target (fraction of dense) instead"
            )
        if self.target is None and self.target_ms is None:
            self.target = Budget.target
        return self


class RewardConfig(Section):
    """The episode reward, computed once a whole policy is applied.

    With ``acc`` the proxy accuracy, ``c`` the budget metric as a fraction of dense and ``t``
    the target (see :class:`autoprune.objective.budget.Reward`):

    * ``hard``: ``acc - penalty * max(0, c/t - 1)``: no effect within budget, a linear
      penalty above it.
    * ``soft``: ``acc * (c/t) ** exponent``, applied to every policy (the MnasNet soft
      reward, Tan et al. 2019; the exponent is <= 0): a policy under budget earns a little
      more than ``acc``, one over budget a little less.

    Attributes:
        kind: ``hard`` or ``soft``.
        penalty: Slope of the hard penalty (>= 0).
        exponent: Exponent of the soft penalty (<= 0).
    """

    kind: Literal["hard", "soft"] = Reward.kind
    penalty: float = Field(Reward.penalty, ge=0.0)
    exponent: float = Field(Reward.exponent, le=0.0)


class PruningConfig(Section):
    """How a policy is applied (see :mod:`autoprune.graph.surgery`).

    Attributes:
        importance: Channel ranking, a criterion in :data:`autoprune.graph.importance.IMPORTANCES`
            (``l1``, ``l2``, ``taylor``, ``bn_scale``) or a ``"package.module:Class"``
            Torch-Pruning importance (``__call__(group)`` -> 1-D tensor of per-channel scores).
        round_to: Keep channel counts at multiples of this (null: no rounding). ``auto``
            (default): the multiple the latency backend runs fastest with
            (``channel_multiple()`` of :func:`autoprune.measure.backends.backend_class`): the CPU's SIMD block (8 with
            AVX2, 16 with AVX-512) on ``onnxruntime`` and ``openvino``, whose blocked layouts pad
            other counts; no rounding on eager ``torch``.
        max_ratio: Largest ratio any unit may be pruned by, in (0, 1).
        drop_blocks: Allow removing whole residual blocks.
        iterative_steps: Reach the policy in this many prune-recover stages.
    """

    importance: ImportanceName = DEFAULT_IMPORTANCE
    round_to: int | Literal["auto"] | None = "auto"

    @field_validator("round_to", mode="before")
    @classmethod
    def _round_to_allowed(cls, v: Any) -> Any:
        if v is None or v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            return v
        raise ValueError(f"{v!r} is not allowed; allowed: an integer >= 1, 'auto' or null")
    max_ratio: float = Field(DEFAULT_MAX_RATIO, gt=0.0, lt=1.0)
    drop_blocks: bool = True
    iterative_steps: int = Field(1, ge=1)


class SearchConfig(Section):
    """The search for per-unit ratios.

    Attributes:
        searcher: A searcher in :data:`autoprune.search.SEARCHERS`: ``ppo`` (agent over the
            layer-pruning env), ``optuna`` (ratios sampled directly), ``ddpg`` (AMC-style), the
            baselines ``random``, ``uniform``, ``global``, ``sensitivity``; or a ``"package.module:Class"``
            :class:`~autoprune.search.Searcher` subclass.
        episodes: Policies evaluated (episodes for agents, trials for Optuna).
        sampler: Optuna sampler (``searcher: optuna`` only), in
            :data:`autoprune.search.samplers.SAMPLERS`: ``tpe``, ``cmaes`` (single-objective),
            ``nsga2`` (multi-objective: accuracy and latency, Pareto front), ``gp``; or a
            ``"package.module:Class"`` Optuna sampler.
        storage: Optuna storage URL (null: an SQLite file in ``output_dir``); use a
            PostgreSQL URL to share a study between machines.
        study: Optuna study name (null: the experiment's name); workers with the same
            storage and study cooperate and resume.
        workers: Parallel worker processes on this machine, at most its CPUs; the latency
            threads are lowered so that ``workers x latency.threads`` fits them.
        params: Searcher hyper-parameters, validated by the searcher itself.
        seed_baselines: The pool starts with the baselines uniform (SIMD-rounded through
            ``pruning.round_to``), Torch-Pruning global, Minitron (a transformer's MLP width only)
            and layer dropping (least block influence first on a decoder), each predicted to just
            meet the budget (:func:`autoprune.search.pool.baseline_pool`), so the search never
            returns worse than the best of them on its reward. They count against ``episodes``.
            Ignored by the baseline searchers themselves.
        at_target: Each policy Optuna samples is moved onto the predicted budget before it is
            evaluated, keeping its shape (:func:`autoprune.search.at_target.at_target`; on latency
            aimed at 0.97 of the target with the table's learned bias removed), so candidates are
            compared at equal cost and the returned one spends the budget. False: proposals as sampled.
        finalists: The final choice is made on a short fine-tune of this many feasible candidates
            with the best proxy reward (:mod:`autoprune.search.selection`; 0: on the proxy alone).
        finalist_steps: Optimiser steps of each finalist's short fine-tune (distillation on, the
            ``finetune`` section's learning rate and batch size, scored on the validation split).
    """

    searcher: SearcherName = "optuna"
    episodes: int = Field(150, ge=1)
    sampler: SamplerName = "tpe"
    storage: str | None = None
    study: str | None = None
    workers: int = Field(1, ge=1)
    params: dict[str, Any] = Field(default_factory=dict)
    seed_baselines: bool = True
    at_target: bool = True
    finalists: int = Field(SelectionSettings.finalists, ge=0)
    finalist_steps: int = Field(SelectionSettings.finalist_steps, ge=1)

    @field_validator("storage")
    @classmethod
    def _rdb_url(cls, v: str | None) -> str | None:
        # Only the form is checked here; whether the database opens is checked when the search starts.
        if v is not None and not _RDB_URL_RE.match(v):
            raise not_allowed("an RDB URL such as 'sqlite:///study.db' or 'postgresql+psycopg2://user@host/db', "
                               "or null for output_dir/study.db")
        return v


class FinetuneConfig(Section):
    """Fine-tuning of the pruned model, optionally distilled from the dense one (defaults: :class:`FinetuneSettings`).

    Attributes:
        epochs: Epochs (0: no fine-tuning).
        lr: Peak learning rate.
        batch_size: Batch size.
        optimizer: ``sgd`` (Nesterov momentum) or ``adamw``.
        schedule: ``cosine`` or ``constant``.
        distill: Add a knowledge-distillation loss with the dense model as teacher.
        temperature: Distillation softmax temperature.
        alpha: Weight of the distillation loss (1 - alpha on the label loss), in [0, 1].
        steps: Optimiser steps in all, instead of ``epochs`` (null: ``epochs`` decide); e.g. a
            decoder LLM's short distillation budget.
    """

    epochs: int = Field(FinetuneSettings.epochs, ge=0)
    lr: float = Field(FinetuneSettings.lr, gt=0.0)
    batch_size: int = Field(FinetuneSettings.batch_size, ge=1)
    optimizer: Literal["sgd", "adamw"] = FinetuneSettings.optimizer
    schedule: Literal["cosine", "constant"] = FinetuneSettings.schedule
    distill: bool = FinetuneSettings.distill
    temperature: float = Field(FinetuneSettings.temperature, gt=0.0)
    alpha: float = Field(FinetuneSettings.alpha, ge=0.0, le=1.0)
    steps: int | None = Field(FinetuneSettings.steps, ge=1)


class ExportConfig(Section):
    """What is exported with the pruned model (its state and pruning history always are).

    Attributes:
        onnx: Also export and check an ONNX model (needs the ``onnx`` extra).
        quantize: Also write a static int8 ONNX model (QDQ, calibrated on training batches;
            implies ``onnx``). ``run`` deploys it only when it measures faster than fp32 on ONNX
            Runtime and its test accuracy is within ``int8_tolerance`` points of fp32.
        int8_tolerance: Largest test-accuracy loss of int8 against fp32, in percentage points.
    """

    onnx: bool = False
    quantize: bool = False
    int8_tolerance: float = Field(1.0, ge=0.0)


with warnings.catch_warnings():
    # The field ``register`` shadows ABCMeta.register on the class only; instances read the field.
    warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)

    class TrackingConfig(Section):
        """MLflow tracking.

        Attributes:
            uri: Tracking URI (null: ``sqlite:///mlflow.db`` in the project directory).
            experiment: MLflow experiment name (null: the experiment's ``name``).
            register: Register the best pruned model in the model registry.
        """

        uri: str | None = None
        experiment: str | None = None
        register: bool = True


__all__ = [
    "BudgetConfig", "DataConfig", "ExportConfig", "FinetuneConfig", "LatencyConfig", "ModelConfig", "ProxyConfig",
    "PruningConfig", "RewardConfig", "SearchConfig", "Section", "TrackingConfig", "TrainConfig", "combination",
]
