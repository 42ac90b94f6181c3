"""Channel-importance criteria: the registry of their names, each a factory of a Torch-Pruning ``Importance``.

A criterion ranks the channels of one dependency group; surgery removes the lowest-ranked.
Every criterion follows Torch-Pruning's ``tp.importance.Importance`` ABC: an object whose
``__call__(group)`` returns a 1-D float tensor of shape ``(channels,)``, one score per channel
of the group (higher: keep). Built-in names wrap Torch-Pruning's criteria; a config may also
name the user's own class as ``"package.module:Class"`` (``pruning.importance``), which is
instantiated without arguments.

A criterion that needs gradients (Taylor, Molchanov et al. 2019) says so with a true
``needs_gradients`` attribute; the graph then back-propagates a few training batches first.
"""

from __future__ import annotations

from typing import Callable

import torch_pruning as tp

from autoprune.errors import ConfigError, describe
from autoprune.registry import Registry

ImportanceFactory = Callable[[], tp.importance.Importance]


def l1_magnitude() -> tp.importance.Importance:
    """L1 norm of each channel's weights over the whole group (Li et al. 2017, "Pruning Filters")."""
    return tp.importance.GroupMagnitudeImportance(p=1)


def l2_magnitude() -> tp.importance.Importance:
    """L2 norm of each channel's weights over the whole group."""
    return tp.importance.GroupMagnitudeImportance(p=2)


def bn_scale() -> tp.importance.Importance:
    """|gamma| of the BatchNorm after each channel (network slimming, Liu et al. 2017)."""
    return tp.importance.BNScaleImportance()


def taylor() -> tp.importance.Importance:
    """First-order Taylor estimate |w * dL/dw| (Molchanov et al. 2019); needs gradients."""
    scorer = tp.importance.GroupTaylorImportance()
    scorer.needs_gradients = True  # type: ignore[attr-defined]
    return scorer


#: The criterion used unless told otherwise (surgery, the evaluator and ``pruning.importance``).
DEFAULT_IMPORTANCE = "l1"

#: The importance criteria: the one list of their names (``pruning.importance`` is checked against it).
IMPORTANCES: Registry[ImportanceFactory] = Registry(
    "importance criterion",
    "pruning.importance",
    {
        "l1": "autoprune.graph.importance:l1_magnitude",
        "l2": "autoprune.graph.importance:l2_magnitude",
        "taylor": "autoprune.graph.importance:taylor",
        "bn_scale": "autoprune.graph.importance:bn_scale",
    },
)


def register_importance(name: str, factory: ImportanceFactory | str) -> None:
    """Make a criterion available to surgery and to configs (``pruning.importance: NAME``).

    Args:
        name: The name a config uses.
        factory: A zero-argument callable (e.g. a ``tp.importance.Importance`` subclass) returning
            the scorer, or its ``"package.module:Class"`` reference.

    Raises:
        ConfigError: an empty name or one containing ``:``.
    """
    IMPORTANCES.register(name, factory)


def make_importance(name: str) -> tp.importance.Importance:
    """A new scorer for the criterion ``name`` (registered name or ``"package.module:Class"``).

    Raises:
        ConfigError: unknown name, an import failure, or a factory that does not return a callable scorer.
    """
    factory = IMPORTANCES.get(name)
    try:
        scorer = factory()
    except Exception as e:  # the user's class raising in __init__
        raise ConfigError(f"pruning.importance: {name!r} could not be created without arguments ({type(e).__name__}: {describe(e)})") from e
    if not callable(scorer):
        raise ConfigError(f"pruning.importance: {name!r} gave a {type(scorer).__name__}, not a callable scorer(group) -> 1-D tensor")
    return scorer


def needs_gradients(scorer: object) -> bool:
    """True when ``scorer`` reads parameter gradients (a ``needs_gradients`` attribute, or a Taylor/Hessian criterion)."""
    flag = getattr(scorer, "needs_gradients", None)
    if flag is not None:
        return bool(flag)
    return isinstance(scorer, (tp.importance.GroupTaylorImportance, tp.importance.GroupHessianImportance))


__all__ = ["DEFAULT_IMPORTANCE", "IMPORTANCES", "ImportanceFactory", "make_importance", "needs_gradients", "register_importance"]
