"""The MLflow model registry: a pruned model's artifact folder registered as a version, and the ``champion`` alias.

A version's source is the run's ``model/`` folder (no MLmodel file, nothing pickled); its tags
say how to read it and its test accuracy. The alias ``champion`` goes to the first version, then
to each new one whose test accuracy is strictly higher than the champion's, so
``models:/<name>@champion`` (:mod:`autoprune.tracking.artifacts`) is always the best so far.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from autoprune.errors import ConfigError
from autoprune.tracking.store import mlflow_message

#: The alias of the best version of a registered model.
CHAMPION = "champion"
#: The version tag holding its test accuracy (``repr`` of a float), compared for :data:`CHAMPION`.
ACCURACY_TAG = "test_accuracy"

_DESCRIPTION = "Pruned by autoprune; load with autoprune.formats.pruned.load_pruned."


@dataclass(frozen=True)
class RegisteredVersion:
    """A model version created by :func:`register_version`.

    Attributes:
        name: The registered model.
        version: Its new version number, as MLflow writes it (``"3"``).
        champion: Whether the version took the :data:`CHAMPION` alias.
    """

    name: str
    version: str
    champion: bool


def register_version(
    client: MlflowClient,
    name: str,
    source: str,
    *,
    run_id: str,
    tags: Mapping[str, str],
    test_accuracy: float | None = None,
) -> RegisteredVersion:
    """Register ``source`` (an artifact folder of ``run_id``) as a new version of ``name``, creating the model if needed.

    Args:
        client: A client of the tracking and registry store.
        name: Registered model name.
        source: The artifact URI of the version's files.
        run_id: The run that logged them.
        tags: Version tags (e.g. the file format); ``test_accuracy`` is added as :data:`ACCURACY_TAG`.
        test_accuracy: The version's test accuracy (None: unknown, never promoted over a champion).

    Raises:
        ConfigError: the registry rejects the name or the version.
    """
    tags = dict(tags)
    if test_accuracy is not None:
        tags[ACCURACY_TAG] = repr(float(test_accuracy))
    try:
        try:
            client.create_registered_model(name, description=_DESCRIPTION)
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        mv = client.create_model_version(name, source, run_id=run_id, tags=tags)
    except MlflowException as e:
        raise ConfigError(f"tracking.register: cannot register model {name!r} ({mlflow_message(e)})") from e
    return RegisteredVersion(name, str(mv.version), promote_if_best(client, name, str(mv.version), test_accuracy))


def promote_if_best(client: MlflowClient, name: str, version: str, accuracy: float | None) -> bool:
    """Give ``version`` the :data:`CHAMPION` alias if there is none yet or ``accuracy`` beats the champion's; True if it did.

    Raises:
        MlflowException: the registry fails otherwise than by having no champion yet.
    """
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as e:
        if e.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            raise
        current = None
    if current is not None:
        best = _float_or_none(current.tags.get(ACCURACY_TAG))
        if accuracy is None or (best is not None and math.isfinite(best) and not float(accuracy) > best):
            return False
    client.set_registered_model_alias(name, CHAMPION, str(version))
    return True


def _float_or_none(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


__all__ = ["ACCURACY_TAG", "CHAMPION", "RegisteredVersion", "promote_if_best", "register_version"]
