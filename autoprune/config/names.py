"""Names a config may use, checked by one mechanism: a :class:`NameRule` per list of names, and an ``Annotated`` type per rule.

A field that names something (a model, a data set, a latency backend, a searcher, an Optuna
sampler, an importance criterion) is typed with the rule's type (``ModelName``, ``BackendName``,
...), so pydantic checks it with :meth:`NameRule.validate` and the user reads one line naming the
field, the value and what is allowed. A command-line option that names one is checked by the
same rule (:meth:`NameRule.check`).

The plug-in names are the registries' (:class:`autoprune.registry.Registry`): a name registered
from Python can be chosen, and a ``"package.module:Class"`` reference is imported when validated,
so a typo fails before any work. Models and data sets are the zoo's names, an encoder folder
(``hf:/path``) or a ``"package.module:factory"`` reference (called only when built).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

from autoprune.errors import ConfigError
from autoprune.graph.importance import IMPORTANCES
from autoprune.measure.backends import BACKENDS
from autoprune.measure.decoder_latency import DECODER_MODES
from autoprune.registry import Registry, is_reference
from autoprune.search import SEARCHERS
from autoprune.search.samplers import SAMPLERS


def not_allowed(allowed: str) -> PydanticCustomError:
    """The pydantic error of a value outside ``allowed`` (shown as ``VALUE is not allowed; allowed: ...``)."""
    return PydanticCustomError("not_allowed", "value is not allowed; allowed: {allowed}", {"allowed": allowed})


def is_factory_reference(name: str) -> bool:
    """True for a complete ``"package.module:attr"`` reference (both sides non-empty)."""
    module, sep, attr = name.partition(":")
    return bool(sep and module and attr)


@dataclass(frozen=True)
class NameRule:
    """What a field that names something accepts.

    Attributes:
        field: The dotted config field, for messages (``model.name``).
        known: True for an accepted name.
        allowed: The text listing what is accepted, for messages.
        resolve: Imports a ``module:attr`` reference now (raising ConfigError naming the field);
            None: a reference is accepted as ``known`` says, and imported when used.
        problem: Why a name of a known form is still refused (e.g. ``resnet45``: no ResNet has that
            depth), or None; said instead of the list of what is allowed.
    """

    field: str
    known: Callable[[str], bool]
    allowed: Callable[[], str]
    resolve: Callable[[str], Any] | None = None
    problem: Callable[[str], str | None] | None = None

    def check(self, name: str) -> str:
        """Return ``name`` if this rule accepts it.

        Raises:
            ConfigError: one line naming the field, the value and what is allowed, or why the
                reference does not import.
        """
        if self.resolve is not None and is_reference(name):
            self.resolve(name)
        elif not self.known(name):
            if (why := self.problem and self.problem(name)) is not None:
                raise ConfigError(f"{self.field}: {why}")
            raise ConfigError(f"{self.field}: {name!r} is not allowed; allowed: {self.allowed()}")
        return name

    def validate(self, name: str) -> str:
        """:meth:`check` as a pydantic validator (its errors become pydantic errors of the field).

        Raises:
            PydanticCustomError: ``not_allowed`` (listing what is), ``invalid_name`` (saying why) or ``invalid_reference``.
        """
        if self.resolve is not None and is_reference(name):
            try:
                self.resolve(name)
            except ConfigError as e:
                raise PydanticCustomError("invalid_reference", str(e).removeprefix(f"{self.field}: ")) from e
        elif not self.known(name):
            if (why := self.problem and self.problem(name)) is not None:
                raise PydanticCustomError("invalid_name", why)
            raise not_allowed(self.allowed())
        return name


def registry_rule(registry: Registry[Any]) -> NameRule:
    """The rule of a registry's field: its names, or a reference imported now."""
    return NameRule(registry.field, lambda name: name in registry.names(), registry.allowed, registry.get)


def _known_model(name: str) -> bool:
    from autoprune.zoo import is_zoo_model  # imports torch: only when a config is validated
    from autoprune.zoo.decoder import is_decoder_name
    from autoprune.zoo.hf import is_encoder_name

    return is_zoo_model(name) or is_factory_reference(name) or is_encoder_name(name) or is_decoder_name(name)


def _model_problem(name: str) -> str | None:
    from autoprune.zoo.models import resnet_depth_problem

    return resnet_depth_problem(name)


def _allowed_models() -> str:
    from autoprune.zoo import MODEL_NAMES
    from autoprune.zoo.decoder import DECODER_NAMES
    from autoprune.zoo.hf import ENCODER_NAMES

    return (", ".join(repr(n) for n in (*MODEL_NAMES, *ENCODER_NAMES, *DECODER_NAMES))
            + ", any 'resnet<6n+2>' (e.g. 'resnet44'), 'hf:/path/to/encoder-or-decoder-folder' or 'package.module:factory'")


def _known_data(name: str) -> bool:
    from autoprune.zoo import DATASET_NAMES
    from autoprune.zoo.text import TEXT_DATASET_NAMES

    return name in DATASET_NAMES or name in TEXT_DATASET_NAMES or is_factory_reference(name)


def _allowed_data() -> str:
    from autoprune.zoo import DATASET_NAMES
    from autoprune.zoo.text import TEXT_DATASET_NAMES

    return ", ".join(repr(n) for n in (*DATASET_NAMES, *TEXT_DATASET_NAMES)) + " or 'package.module:factory'"


#: ``model.name``: a zoo model (any CIFAR ResNet ``resnet<6n+2>`` too), a sentence encoder, or a ``"package.module:factory"`` reference.
MODEL = NameRule("model.name", _known_model, _allowed_models, problem=_model_problem)
#: ``data.name``: a zoo data set, a text data set, or a ``"package.module:factory"`` reference.
DATA = NameRule("data.name", _known_data, _allowed_data)
BACKEND = registry_rule(BACKENDS)
#: ``latency.mode``: the decoder latency modes (:data:`autoprune.measure.decoder_latency.DECODER_MODES`, their one list).
MODE = NameRule("latency.mode", lambda name: name in DECODER_MODES, lambda: ", ".join(DECODER_MODES))
SEARCHER = registry_rule(SEARCHERS)
SAMPLER = registry_rule(SAMPLERS)
IMPORTANCE = registry_rule(IMPORTANCES)

ModelName = Annotated[str, AfterValidator(MODEL.validate)]
DataName = Annotated[str, AfterValidator(DATA.validate)]
BackendName = Annotated[str, AfterValidator(BACKEND.validate)]
SearcherName = Annotated[str, AfterValidator(SEARCHER.validate)]
SamplerName = Annotated[str, AfterValidator(SAMPLER.validate)]
ImportanceName = Annotated[str, AfterValidator(IMPORTANCE.validate)]
ModeName = Annotated[str, AfterValidator(MODE.validate)]

__all__ = [
    "BACKEND", "DATA", "IMPORTANCE", "MODE", "MODEL", "SAMPLER", "SEARCHER", "BackendName", "DataName", "ImportanceName", "ModeName",
    "ModelName", "NameRule", "SamplerName", "SearcherName", "is_factory_reference", "not_allowed", "registry_rule",
]
