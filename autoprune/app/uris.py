"""Where ``runs:/`` and ``models:/`` URIs become local files: the only place above the formats that knows MLflow URIs.

Policies, agent bundles and pruned models are read from local files by the layers below
(:mod:`autoprune.formats.policy_file`, :func:`autoprune.search.agent.find_bundle`,
:mod:`autoprune.formats.pruned`); this module downloads the artifact first when the source
is an MLflow URI.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from autoprune.errors import ConfigError
from autoprune.formats.policy_file import POLICY_FILE, read_policy_file
from autoprune.graph.policy import Policy
from autoprune.search.agent import find_bundle
from autoprune.tracking.artifacts import download_artifact_uri, download_model_uri

MLFLOW_SCHEMES = ("runs:/", "models:/")


def is_mlflow_uri(source: str | Path) -> bool:
    """True for ``runs:/...`` and ``models:/...`` sources."""
    return str(source).startswith(MLFLOW_SCHEMES)


def load_policy(source: str, *, tracking_uri: str | None = None, option: str = "--policy") -> tuple[Policy, dict]:
    """Read a policy from a JSON file, ``runs:/<run_id>/policy.json`` or ``models:/<name>@<alias>``.

    Returns the policy and the whole file payload (see :func:`autoprune.formats.policy_file.read_policy_file`);
    every message names ``option``, the command-line option the policy was given with.

    Raises:
        ConfigError: a missing file, an unknown MLflow URI, or a URI that holds no policy.json.
        PolicyError: an unreadable, truncated or malformed file, or a wrong format version.
    """
    if not is_mlflow_uri(source):
        return read_policy_file(source, source=source, option=option)
    with tempfile.TemporaryDirectory(prefix="autoprune-artifact-") as tmp:  # read into memory, then deleted
        path = download_artifact_uri(source, tracking_uri=tracking_uri, dst=tmp, option=option)
        if path.is_dir():
            found = sorted(path.rglob(POLICY_FILE))
            if not found:
                raise ConfigError(f"{option}: {source!r} holds no {POLICY_FILE}")
            path = found[0]
        return read_policy_file(path, source=source, option=option)


def locate_bundle(source: str | Path, *, tracking_uri: str | None = None) -> Path:
    """The local agent bundle behind a folder, its ``agent.zip``, or a ``runs:/``/``models:/`` URI; its manifest is checked.

    Raises:
        ConfigError: nothing there, or no agent.zip in it.
        PolicyError: the manifest is missing or does not fit this version's environment.
    """
    text = str(source)
    if is_mlflow_uri(text):
        return find_bundle(download_artifact_uri(text, tracking_uri=tracking_uri, option="--agent"), source=text)
    return find_bundle(text, source=text)


def local_model_file(source: str | Path, *, tracking_uri: str | None = None) -> Path:
    """The local pruned-model file behind a path, ``runs:/<id>/model`` or ``models:/<name>@<alias>``.

    Raises:
        ConfigError: a missing file, an unknown URI, or a URI that holds no model file.
    """
    return download_model_uri(source, tracking_uri=tracking_uri)


__all__ = ["is_mlflow_uri", "load_policy", "local_model_file", "locate_bundle"]
