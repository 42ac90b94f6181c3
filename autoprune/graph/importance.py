"""Channel-importance criteria: the registry of their names, each a factory of a Torch-Pruning ``Importance``.

A criterion ranks the channels of one dependency group; surgery removes the lowest-ranked.
Every criterion follows Torch-Pruning's ``tp.importance.Importance`` ABC: an object whose
``__call__(group)`` returns a 1-D float tensor of shape ``(channels,)``, one score per channel
of the group (higher: keep). Built-in names wrap Torch-Pruning's criteria; a config may also
name the user's own class as ``"package.module:Class"`` (``pruning.importance``), which is
instantiated without arguments.

A criterion that needs gradients (Taylor, Molchanov et al. 2019) says so with a true
``needs_gradients`` attribute; the graph then back-propagates a few calibration batches first,
through a loss the caller may choose (:func:`autoprune.graph.scoring.accumulate_gradients`).
A criterion that needs activations (``activation``) says so with a true ``needs_activations``
attribute; the graph then records mean absolute activations over calibration inputs and sets
them as the scorer's ``activations`` before calling it (:mod:`autoprune.graph.scoring`).

Every criterion works on every unit kind: conv and linear channels, attention heads (their
group couples the query/key/value rows and the output projection's columns, so magnitude and
Taylor scores cover the whole head) and FFN neurons.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
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


class ActivationImportance(tp.importance.Importance):
    """Mean absolute activation of each channel over calibration inputs (higher: keep).

    The activation-based criterion Minitron uses to rank attention heads, FFN neurons and channels
    (Muralidharan et al. 2024, "Compact Language Models via Pruning and Knowledge Distillation");
    for conv channels it is the mean-activation criterion named next to L1 and Taylor in surveys of
    structured pruning (cf. APoZ, Hu et al. 2016, which counts zeros of the same activations).

    The graph fills :attr:`activations` (``{module: mean |activation| per channel}``, from
    :func:`autoprune.graph.scoring.mean_abs_activations`) before calling the scorer on a group; a
    channel's score is the sum over the group's output layers that have a recorded activation.
    For attention heads the recorded activation is the heads' context output (keyed by the
    ``value`` projection), so a head's score is its mean absolute output per channel.
    """

    needs_activations = True

    def __init__(self) -> None:
        self.activations: dict = {}

    def __call__(self, group: tp.dependency.Group) -> torch.Tensor | None:
        """Scores of shape ``(channels,)`` in the group's root coordinates, or ``None`` with no recorded activation."""
        scores = None
        for item in group:
            dep = item.dep
            act = self.activations.get(dep.target.module)
            if act is None or not group._DG.is_out_channel_pruning_fn(dep.handler):
                continue
            plain = tp._helpers.to_plain_idxs(item.idxs)
            root = item.root_idxs if item.root_idxs is not None else plain
            if scores is None:
                scores = torch.zeros(len(group[0].idxs), dtype=torch.float64)
            scores.index_add_(0, torch.as_tensor(root, dtype=torch.long), act[torch.as_tensor(plain, dtype=torch.long)].double())
        return scores


def activation() -> tp.importance.Importance:
    """Mean absolute activation over calibration inputs (Minitron, Muralidharan et al. 2024); needs calibration batches."""
    return ActivationImportance()


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
        "activation": "autoprune.graph.importance:activation",
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


def needs_activations(scorer: object) -> bool:
    """True when ``scorer`` reads recorded activations (a true ``needs_activations`` attribute)."""
    return bool(getattr(scorer, "needs_activations", False))


def needs_data(scorer: object) -> bool:
    """True when ``scorer`` ranks channels from calibration batches (gradients or activations)."""
    return needs_gradients(scorer) or needs_activations(scorer)


__all__ = ["ActivationImportance", "DEFAULT_IMPORTANCE", "IMPORTANCES", "ImportanceFactory", "make_importance", "needs_activations", "needs_data", "needs_gradients", "register_importance"]
