"""The experiment config schema (pydantic): one experiment of sections, the checks across sections, and its YAML form.

An experiment is one YAML file; only ``model.name`` is required::

    name: resnet20-fmnist
    model: {name: resnet20}
    budget: {metric: latency, target: 0.5}
    search: {searcher: optuna, episodes: 100}

The sections are in :mod:`autoprune.config.sections`; every one forbids unknown keys, so a
typo is an error rather than a silently ignored setting. :func:`load_config` turns pydantic's
validation errors into one :class:`~autoprune.errors.ConfigError` line naming the file, the
dotted field, the bad value and what is allowed.

**One source for each setting.** A default is written once, in the library's settings
dataclass (:class:`~autoprune.training.baseline.TrainSettings`,
:class:`~autoprune.measure.settings.LatencySettings`, ...), and the fields here read it
(``Field(TrainSettings.epochs)``): the library is usable without a config, so its defaults
must exist there, and a config only documents, validates and overrides them. The schema is
turned into those settings by one function, :func:`autoprune.config.settings.library_settings`.

**Registries are the only name lists.** Fields that name a plug-in (``latency.backend``,
``search.searcher``, ``search.sampler``, ``pruning.importance``) are checked against the
registries (:class:`autoprune.registry.Registry`), so a name registered from Python can be
chosen here, and so can a ``"package.module:Class"`` reference (imported when validated). Every
field that names something (models and data sets too) is checked by one mechanism, a rule per
list of names (:mod:`autoprune.config.names`).
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml
from pydantic import Field, field_validator, model_validator

from autoprune.config.names import is_factory_reference, not_allowed
from autoprune.config.sections import (
    BudgetConfig,
    DataConfig,
    ExportConfig,
    FinetuneConfig,
    LatencyConfig,
    ModelConfig,
    ProxyConfig,
    PruningConfig,
    RewardConfig,
    SearchConfig,
    Section,
    TrackingConfig,
    TrainConfig,
    combination,
)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ExperimentConfig(Section):
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
            raise not_allowed("letters, digits, '_', '.' and '-', starting with a letter or digit")
        return v

    @model_validator(mode="after")
    def _resolve(self) -> ExperimentConfig:
        self.output_dir = self.output_dir.replace("{name}", self.name)
        if self.tracking.experiment is None:
            self.tracking.experiment = self.name
        self._model_fits_data()
        return self

    def _model_fits_data(self) -> None:
        """An encoder goes with text and the fidelity proxy, a decoder LLM with text and the KL proxy, a classifier with labelled data and accuracy."""
        from autoprune.zoo.decoder import is_decoder_name
        from autoprune.zoo.hf import is_encoder_name
        from autoprune.zoo.text import TEXT_DATASET_NAMES

        if is_decoder_name(self.model.name):
            return self._decoder_fits()
        m, d = self.model.name, self.data.name
        encoder, text = is_encoder_name(m), d in TEXT_DATASET_NAMES
        if encoder and not text and not is_factory_reference(d):
            raise combination(f"data.name: {d!r} is not text; the sentence encoder {m!r} needs a text data set: 'fortunes'")
        if text and not encoder:
            raise combination(f"model.name: {m!r} is not a sentence encoder; data {d!r} is text and needs one: 'minilm' or 'hf:/path/to/folder'")
        if self.proxy.metric is None:
            self.proxy.metric = "fidelity" if encoder else "accuracy"
        elif self.proxy.metric == "kl":
            raise combination(f"proxy.metric: 'kl' needs a decoder LLM ('smollm2' or 'hf:/path/to/decoder'), not model {m!r}")
        elif self.proxy.metric == "fidelity" and not encoder:
            raise combination(f"proxy.metric: 'fidelity' needs a sentence encoder and text, not model {m!r}; use 'accuracy'")
        elif self.proxy.metric == "accuracy" and encoder:
            raise combination(f"proxy.metric: 'accuracy' needs class labels; the encoder {m!r} on text has none: use 'fidelity'")
        if not encoder:
            if self.data.limit is not None:
                raise combination(f"data.limit: {self.data.limit!r} is for text data only; set it to null for {d!r}")
            return
        self._pretrained_only("encoder")

    def _pretrained_only(self, what: str) -> None:
        """A pretrained transformer is pruned as it is: no checkpoint, no int8, one shot."""
        for field, bad, fix in (("model.checkpoint", self.model.checkpoint is not None, f"null (the pretrained {what} is the baseline)"),
                                ("export.quantize", self.export.quantize, f"false (int8 of an {what} is not supported yet)"),
                                ("pruning.iterative_steps", self.pruning.iterative_steps > 1, f"1 (an {what} is pruned in one shot)")):
            if bad:
                raise combination(f"{field}: not allowed with the {what} {self.model.name!r}; set it to {fix}")

    def _decoder_fits(self) -> None:
        """A decoder LLM: real text (``fortunes`` by default), the KL proxy, activation importance by default, latency timed eagerly."""
        from autoprune.measure.backends import backend_class
        from autoprune.zoo.text import TEXT_DATASET_NAMES

        m = self.model.name
        if "name" not in self.data.model_fields_set:
            self.data.name = TEXT_DATASET_NAMES[0]
        if self.data.name not in TEXT_DATASET_NAMES and not is_factory_reference(self.data.name):
            raise combination(f"data.name: {self.data.name!r} is not text; the decoder {m!r} needs a text data set: 'fortunes'")
        if self.proxy.metric is None:
            self.proxy.metric = "kl"
        elif self.proxy.metric != "kl":
            raise combination(f"proxy.metric: {self.proxy.metric!r} does not fit the decoder {m!r}; use 'kl' (or null)")
        if "importance" not in self.pruning.model_fields_set:
            self.pruning.importance = "activation"  # Minitron's width criterion
        if not backend_class(self.latency.backend).eager:
            raise combination(f"latency.backend: {self.latency.backend!r} cannot time a decoder LLM yet; allowed: an eager backend ('torch')")
        if self.latency.prompt_tokens > self.data.max_length:
            raise combination(f"latency.prompt_tokens: {self.latency.prompt_tokens} is above data.max_length {self.data.max_length} "
                              "(the prompt is cut from a block of text); lower it or raise data.max_length")
        if self.export.onnx:
            raise combination(f"export.onnx: not allowed with the decoder {m!r} yet; set it to false (the pruned decoder is saved as safetensors)")
        self._pretrained_only("decoder")

    def notes(self) -> list[str]:
        """Lines ``autoprune config`` prints about settings this experiment ignores (as YAML comments)."""
        from autoprune.zoo.decoder import is_decoder_name

        if is_decoder_name(self.model.name):
            return []
        return [f"# latency.mode, latency.prompt_tokens and latency.new_tokens apply to decoder LLMs only; ignored for model {self.model.name!r}"]

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


__all__ = ["ExperimentConfig", "dump_config"]
