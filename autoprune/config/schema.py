"""The experiment config schema (pydantic): every section, its defaults (read from the library settings) and its checks.

An experiment is one YAML file; only ``model.name`` is required::

    name: resnet20-fmnist
    model: {name: resnet20}
    budget: {metric: latency, target: 0.5}
    search: {searcher: optuna, episodes: 100}

Every section forbids unknown keys, so a typo is an error rather than a silently
ignored setting. :func:`load_config` turns pydantic's validation errors into one
:class:`~autoprune.errors.ConfigError` line naming the file, the dotted field, the
bad value and what is allowed.

**One source for each setting.** A default is written once, in the library's settings
dataclass (:class:`~autoprune.training.baseline.TrainSettings`,
:class:`~autoprune.objective.evaluator.LatencySettings`, ...), and the fields here read it
(``Field(TrainSettings.epochs)``): the library is usable without a config, so its defaults
must exist there, and a config only documents, validates and overrides them. The schema is
turned into those settings by one function, :func:`autoprune.config.settings.library_settings`.

**Registries are the only name lists.** Fields that name a plug-in (``latency.backend``,
``search.searcher``, ``search.sampler``, ``pruning.importance``) are checked against the
registries (:class:`autoprune.registry.Registry`), so a name registered from Python can be
chosen here, and so can a ``"package.module:Class"`` reference (imported when validated).
"""

from __future__ import annotations

import json
import re
import warnings
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from autoprune.errors import ConfigError
from autoprune.graph.importance import DEFAULT_IMPORTANCE, IMPORTANCES
from autoprune.measure.latency import BACKENDS, backend_option_names
from autoprune.objective.evaluator import DEFAULT_MAX_RATIO, Budget, LatencySettings, Reward
from autoprune.objective.proxy import ProxySettings
from autoprune.registry import Registry, is_reference
from autoprune.search import SEARCHERS
from autoprune.search.samplers import SAMPLERS
from autoprune.training.baseline import TrainSettings
from autoprune.training.finetune import FinetuneSettings

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_RDB_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]*(\+[A-Za-z0-9_]+)?://")  # dialect[+driver]://...


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _not_allowed(allowed: str) -> PydanticCustomError:
    return PydanticCustomError("not_allowed", "value is not allowed; allowed: {allowed}", {"allowed": allowed})


def _combination(message: str) -> PydanticCustomError:
    """An error about several fields together; ``message`` names them and their values."""
    return PydanticCustomError("invalid_combination", message)  # no context: never formatted


def _is_reference(name: str) -> bool:
    module, sep, attr = name.partition(":")
    return bool(sep and module and attr)


def _registered(registry: Registry[Any], name: str) -> str:
    """``name`` if ``registry`` knows it; a reference is imported now, so a typo fails before any work.

    Raises:
        PydanticCustomError: unknown name (listing the registry's names) or a reference that
            does not import.
    """
    if not is_reference(name):
        if name not in registry.names():
            raise _not_allowed(registry.allowed())
        return name
    try:
        registry.get(name)
    except ConfigError as e:
        raise PydanticCustomError("invalid_reference", str(e).removeprefix(f"{registry.field}: ")) from e
    return name


def check_model_name(name: str) -> str:
    """Return ``name`` if it is a zoo model or a ``"package.module:factory"`` reference.

    Raises:
        ConfigError: naming the allowed models.
    """
    allowed = _allowed_model_names(name)
    if allowed is not None:
        raise ConfigError(f"model.name: {name!r} is not allowed; allowed: {allowed}")
    return name


def check_data_name(name: str) -> str:
    """Return ``name`` if it is a zoo data set or a ``"package.module:factory"`` reference.

    Raises:
        ConfigError: naming the allowed data sets.
    """
    allowed = _allowed_data_names(name)
    if allowed is not None:
        raise ConfigError(f"data.name: {name!r} is not allowed; allowed: {allowed}")
    return name


def _allowed_model_names(name: str) -> str | None:
    """None if ``name`` is valid, else the text listing what is allowed."""
    from autoprune.zoo import MODEL_NAMES  # imports torch: only when a config is validated
    from autoprune.zoo.hf import ENCODER_NAMES, is_encoder_name

    if name in MODEL_NAMES or _is_reference(name) or is_encoder_name(name):
        return None
    return ", ".join(repr(n) for n in (*MODEL_NAMES, *ENCODER_NAMES)) + ", 'hf:/path/to/encoder-folder' or 'package.module:factory'"


def _allowed_data_names(name: str) -> str | None:
    from autoprune.zoo import DATASET_NAMES
    from autoprune.zoo.text import TEXT_DATASET_NAMES

    if name in DATASET_NAMES or name in TEXT_DATASET_NAMES or _is_reference(name):
        return None
    return ", ".join(repr(n) for n in (*DATASET_NAMES, *TEXT_DATASET_NAMES)) + " or 'package.module:factory'"


class ModelConfig(_Section):
    """The model to prune.

    Attributes:
        name: A zoo model (``resnet20``, ``resnet32``, ``resnet56``, ``vgg_small``,
            ``mobilenetv2``, ``mlp``) or a ``"package.module:factory"`` reference, called with
            ``in_channels=``, ``num_classes=`` and ``input_size=``; or a pretrained sentence
            encoder (needs a text data set): ``minilm`` or ``hf:/path/to/folder`` (any local
            BERT-family encoder, :mod:`autoprune.zoo.hf`).
        checkpoint: Weights to start from. None: the cached baseline, trained once with the
            ``train`` section when missing (an encoder is used as it is: no checkpoint, no training).
        ignore: Module names (as in ``model.named_modules()``) that are never pruned.
    """

    name: str
    checkpoint: str | None = None
    ignore: list[str] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _known_model(cls, v: str) -> str:
        allowed = _allowed_model_names(v)
        if allowed is not None:
            raise _not_allowed(allowed)
        return v


class DataConfig(_Section):
    """The data set.

    Attributes:
        name: ``fashion_mnist``, ``digits`` or a ``"package.module:factory"`` reference
            returning an :class:`autoprune.zoo.DataBundle`; or the text data set ``fortunes``
            (Debian's quotations, :mod:`autoprune.zoo.text`) for a sentence encoder.
        data_dir: Where Fashion-MNIST's IDX files are (None: ``$AUTOPRUNE_DATA``, then
            ``/usr/share/datasets/fashion-mnist``); for ``fortunes``, a folder of ``%``-separated
            files (None: ``/usr/share/games/fortunes``).
        val_fraction: Share of the training set held out for validation; the search only
            ever scores on it, the test split is kept for the final result.
        max_length: Text only: tokens per sentence at most (special tokens included), also the
            sequence length at which latency is measured; at most the encoder's positions.
        limit: Text only: keep the first ``limit`` sentences of each split (null: all), e.g. a
            small real subset for a quick run.
    """

    name: str = "fashion_mnist"
    data_dir: str | None = None
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    max_length: int = Field(128, ge=2)
    limit: int | None = Field(None, ge=3)

    @field_validator("name")
    @classmethod
    def _known_data(cls, v: str) -> str:
        allowed = _allowed_data_names(v)
        if allowed is not None:
            raise _not_allowed(allowed)
        return v


class TrainConfig(_Section):
    """Training of the dense baseline, used only when no checkpoint exists yet (defaults: :class:`TrainSettings`)."""

    epochs: int = Field(TrainSettings.epochs, ge=1)
    batch_size: int = Field(TrainSettings.batch_size, ge=1)
    lr: float = Field(TrainSettings.lr, gt=0.0)
    weight_decay: float = Field(TrainSettings.weight_decay, ge=0.0)
    augment: bool = TrainSettings.augment


class ProxyConfig(_Section):
    """The fast accuracy proxy used during search (see :mod:`autoprune.objective.proxy`).

    Attributes:
        bn_batches: Training batches to re-estimate BatchNorm statistics after pruning (0: off).
        bn_batch_size: Size of those batches.
        val_samples: Validation samples (sentences, for fidelity) scored per candidate (null: the whole split).
        metric: ``accuracy`` (classifiers: top-1 after adaptive BN) or ``fidelity`` (sentence
            encoders, label-free: the mean of the cosine similarity to the dense embeddings and
            the 10-nearest-neighbour agreement, :mod:`autoprune.objective.proxies`). Null: the
            one the model calls for.
        neighbours: ``fidelity``: neighbours compared per sentence.
    """

    bn_batches: int = Field(ProxySettings.bn_batches, ge=0)
    bn_batch_size: int = Field(ProxySettings.bn_batch_size, ge=1)
    val_samples: int | None = Field(ProxySettings.val_samples, ge=1)
    metric: Literal["accuracy", "fidelity"] | None = None
    neighbours: int = Field(ProxySettings.neighbours, ge=1)


class LatencyConfig(_Section):
    """How latency is measured (see :mod:`autoprune.measure.latency`; defaults: :class:`LatencySettings`).

    While an episode runs, the environment clips actions with the latency lookup table; the
    reward is always measured.

    Attributes:
        backend: A latency backend in :data:`autoprune.measure.latency.BACKENDS` (``torch``
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
        predictor: Removed: only ``table`` (what was always used) is still accepted, from
            older configs; it is not written back.
    """

    backend: str = LatencySettings.backend
    batch_size: int = Field(LatencySettings.batch_size, ge=1)
    threads: int = Field(LatencySettings.threads, ge=1)
    warmup: int = Field(LatencySettings.warmup, ge=0)
    rounds: int = Field(LatencySettings.rounds, ge=1)
    rel_ci: float | None = Field(LatencySettings.rel_ci, gt=0.0)
    backend_options: dict[str, Any] | None = LatencySettings.backend_options
    predictor: str | None = Field(None, exclude=True)

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, v: str) -> str:
        return _registered(BACKENDS, v)

    @field_validator("predictor")
    @classmethod
    def _removed_predictor(cls, v: str | None) -> None:
        if v not in (None, "table"):
            raise _not_allowed("only 'table' (the environment always clips with the latency lookup table and the "
                               "reward is always measured; 'measured' was never implemented): delete latency.predictor")
        return None

    @model_validator(mode="after")
    def _known_backend_options(self) -> LatencyConfig:
        allowed = backend_option_names(self.backend)
        unknown = [k for k in self.backend_options or {} if allowed is not None and k not in allowed]
        if unknown:
            raise _combination(
                f"backend_options: backend {self.backend!r} has no option {unknown[0]!r}; allowed: {', '.join(allowed) or 'none'}"
            )
        return self

    def backend_info(self) -> dict[str, Any]:
        """Where latency is measured (backend, its options, batch size, threads): recorded with every found policy."""
        return {"name": self.backend, "batch_size": self.batch_size, "threads": self.threads, "options": dict(self.backend_options or {})}


class BudgetConfig(_Section):
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
            raise _combination(
                f"target={self.target!r} and target_ms={self.target_ms!r} are both set; set exactly one "
                "(target: fraction of dense, target_ms: milliseconds) and the other to null"
            )
        if self.target_ms is not None and self.metric != "latency":
            raise _combination(
                f"target_ms={self.target_ms!r} needs metric 'latency', not {self.metric!r}; "
                "for metric 'macs' set target (fraction of dense) instead"
            )
        if self.target is None and self.target_ms is None:
            self.target = Budget.target
        return self


class RewardConfig(_Section):
    """The episode reward, computed once a whole policy is applied.

    With ``acc`` the proxy accuracy, ``c`` the budget metric as a fraction of dense and ``t``
    the target (see :class:`autoprune.objective.evaluator.Reward`):

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


class PruningConfig(_Section):
    """How a policy is applied (see :mod:`autoprune.graph.surgery`).

    Attributes:
        importance: Channel ranking, a criterion in :data:`autoprune.graph.importance.IMPORTANCES`
            (``l1``, ``l2``, ``taylor``, ``bn_scale``) or a ``"package.module:Class"``
            Torch-Pruning importance (``__call__(group)`` -> 1-D tensor of per-channel scores).
        round_to: Keep channel counts at multiples of this (null: no rounding). ``auto``
            (default): the multiple the latency backend runs fastest with
            (:func:`autoprune.measure.backends.channel_multiple`): the CPU's SIMD block (8 with
            AVX2, 16 with AVX-512) on ``onnxruntime`` and ``openvino``, whose blocked layouts pad
            other counts; no rounding on eager ``torch``.
        max_ratio: Largest ratio any unit may be pruned by, in (0, 1).
        drop_blocks: Allow removing whole residual blocks.
        iterative_steps: Reach the policy in this many prune-recover stages.
    """

    importance: str = DEFAULT_IMPORTANCE
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

    @field_validator("importance")
    @classmethod
    def _known_importance(cls, v: str) -> str:
        return _registered(IMPORTANCES, v)


class SearchConfig(_Section):
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
    """

    searcher: str = "optuna"
    episodes: int = Field(150, ge=1)
    sampler: str = "tpe"
    storage: str | None = None
    study: str | None = None
    workers: int = Field(1, ge=1)
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("searcher")
    @classmethod
    def _known_searcher(cls, v: str) -> str:
        return _registered(SEARCHERS, v)

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, v: str) -> str:
        return _registered(SAMPLERS, v)

    @field_validator("storage")
    @classmethod
    def _rdb_url(cls, v: str | None) -> str | None:
        # Only the form is checked here; whether the database opens is checked when the search starts.
        if v is not None and not _RDB_URL_RE.match(v):
            raise _not_allowed("an RDB URL such as 'sqlite:///study.db' or 'postgresql+psycopg2://user@host/db', "
                               "or null for output_dir/study.db")
        return v


class FinetuneConfig(_Section):
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
    """

    epochs: int = Field(FinetuneSettings.epochs, ge=0)
    lr: float = Field(FinetuneSettings.lr, gt=0.0)
    batch_size: int = Field(FinetuneSettings.batch_size, ge=1)
    optimizer: Literal["sgd", "adamw"] = FinetuneSettings.optimizer
    schedule: Literal["cosine", "constant"] = FinetuneSettings.schedule
    distill: bool = FinetuneSettings.distill
    temperature: float = Field(FinetuneSettings.temperature, gt=0.0)
    alpha: float = Field(FinetuneSettings.alpha, ge=0.0, le=1.0)


class ExportConfig(_Section):
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

    class TrackingConfig(_Section):
        """MLflow tracking.

        Attributes:
            uri: Tracking URI (null: ``sqlite:///mlflow.db`` in the project directory).
            experiment: MLflow experiment name (null: the experiment's ``name``).
            register: Register the best pruned model in the model registry.
        """

        uri: str | None = None
        experiment: str | None = None
        register: bool = True


class ExperimentConfig(_Section):
    """One experiment: what to prune, under which budget, searched how, tracked where.

    Attributes:
        name: Experiment name: letters, digits, ``_``, ``.``, ``-``.
        seed: Seed of data splits, training and search.
        output_dir: Where results go; ``{name}`` is replaced by ``name`` here, once, when the
            config is validated (``cfg.output_dir`` is the final path).
    """

    name: str = "experiment"
    seed: int = Field(0, ge=0)
    output_dir: str = "runs/{name}"
    model: ModelConfig
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    proxy: ProxyConfig = Field(default_factory=ProxyConfig)
    latency: LatencyConfig = Field(default_factory=LatencyConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    pruning: PruningConfig = Field(default_factory=PruningConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise _not_allowed("letters, digits, '_', '.' and '-', starting with a letter or digit")
        return v

    @model_validator(mode="after")
    def _resolve(self) -> ExperimentConfig:
        self.output_dir = self.output_dir.replace("{name}", self.name)
        if self.tracking.experiment is None:
            self.tracking.experiment = self.name
        self._model_fits_data()
        return self

    def _model_fits_data(self) -> None:
        """An encoder goes with text and the fidelity proxy, a classifier with labelled data and accuracy."""
        from autoprune.zoo.hf import is_encoder_name
        from autoprune.zoo.text import TEXT_DATASET_NAMES

        m, d = self.model.name, self.data.name
        encoder, text = is_encoder_name(m), d in TEXT_DATASET_NAMES
        if encoder and not text and not _is_reference(d):
            raise _combination(f"data.name: {d!r} is not text; the sentence encoder {m!r} needs a text data set: 'fortunes'")
        if text and not encoder:
            raise _combination(f"model.name: {m!r} is not a sentence encoder; data {d!r} is text and needs one: 'minilm' or 'hf:/path/to/folder'")
        if self.proxy.metric is None:
            self.proxy.metric = "fidelity" if encoder else "accuracy"
        elif self.proxy.metric == "fidelity" and not encoder:
            raise _combination(f"proxy.metric: 'fidelity' needs a sentence encoder and text, not model {m!r}; use 'accuracy'")
        elif self.proxy.metric == "accuracy" and encoder:
            raise _combination(f"proxy.metric: 'accuracy' needs class labels; the encoder {m!r} on text has none: use 'fidelity'")
        if not encoder:
            if self.data.limit is not None:
                raise _combination(f"data.limit: {self.data.limit!r} is for text data only; set it to null for {d!r}")
            return
        for field, bad, fix in (("model.checkpoint", self.model.checkpoint is not None, "null (the pretrained encoder is the baseline)"),
                                ("export.quantize", self.export.quantize, "false (int8 of an encoder is not supported yet)"),
                                ("pruning.iterative_steps", self.pruning.iterative_steps > 1, "1 (an encoder is pruned in one shot)")):
            if bad:
                raise _combination(f"{field}: not allowed with the encoder {m!r}; set it to {fix}")

    def flat(self) -> dict[str, str]:
        """All settings as ``{"search.episodes": "150", ...}``, e.g. for MLflow params.

        Strings are kept as they are; other values are written as JSON (``true``, ``null``,
        ``[]``). Nested mappings such as ``search.params`` are flattened too.
        """
        out: dict[str, str] = {}
        _flatten(self.model_dump(mode="json"), "", out)
        return out


def _flatten(value: Any, prefix: str, out: dict[str, str]) -> None:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(value, str):
        out[prefix] = value
    else:
        out[prefix] = json.dumps(value)


def dump_config(cfg: ExperimentConfig) -> str:
    """The config as YAML, every default written out; :func:`load_config` reads it back."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, default_flow_style=False)


__all__ = [
    "BudgetConfig",
    "DataConfig",
    "ExperimentConfig",
    "ExportConfig",
    "FinetuneConfig",
    "LatencyConfig",
    "ModelConfig",
    "ProxyConfig",
    "PruningConfig",
    "RewardConfig",
    "SearchConfig",
    "TrackingConfig",
    "TrainConfig",
    "check_data_name",
    "check_model_name",
    "dump_config",

]
