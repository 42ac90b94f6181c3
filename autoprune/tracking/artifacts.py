"""Local files behind ``runs:/`` and ``models:/`` URIs (or plain paths): pruned models, policies, agents."""

from __future__ import annotations

import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from autoprune.errors import ConfigError
from autoprune.formats.pruned import MODEL_FILE
from autoprune.tracking.store import mlflow_message, no_progress_bars, quiet_mlflow, resolve_tracking_uri, sqlite_file


def download_artifact_uri(uri: str | Path, *, tracking_uri: str | None = None, dst: str | Path | None = None,
                          option: str = "uri") -> Path:
    """The local file or folder behind a path, a ``runs:/`` URI or a ``models:/`` URI.

    Args:
        uri: A local path, ``runs:/<run_id>/<path>``, ``models:/<name>@<alias>[/<path>]``,
            ``models:/<name>/<version>`` or ``models:/<name>/latest``.
        tracking_uri: Where the run or registered model is (see :func:`resolve_tracking_uri`;
            None: ``sqlite:///<current directory>/mlflow.db``).
        dst: Folder to download into (default: a new temporary folder).
        option: The option or field to name in error messages.

    Raises:
        ConfigError: one line naming ``uri`` when it does not exist.
    """
    text = str(uri)
    scheme = urllib.parse.urlparse(text).scheme
    if scheme not in ("runs", "models"):
        path = Path(urllib.request.url2pathname(urllib.parse.urlparse(text).path)) if scheme == "file" else Path(text)
        if not path.exists():
            raise ConfigError(f"{option}: {text}: no such file; expected a path, runs:/<run_id>/<path> or models:/<name>@<alias>")
        return path
    turi = resolve_tracking_uri(tracking_uri)
    db = sqlite_file(turi)
    if db is not None and not db.is_file():
        raise ConfigError(f"{option}: {text}: no MLflow database at {db} (tracking.uri {turi})")
    quiet_mlflow()
    client = MlflowClient(tracking_uri=turi, registry_uri=turi)
    target = Path(dst) if dst is not None else Path(tempfile.mkdtemp(prefix="autoprune-artifact-"))
    target.mkdir(parents=True, exist_ok=True)
    try:
        with no_progress_bars():
            if scheme == "runs":
                run_id, _, sub = text[len("runs:/"):].lstrip("/").partition("/")
                if not run_id:
                    raise ConfigError(f"{option}: {text}: expected runs:/<run_id>/<path>")
                client.get_run(run_id)
                local = client.download_artifacts(run_id, sub, str(target))
            else:
                name, version, sub = _parse_models_uri(client, text)
                source = client.get_model_version_download_uri(name, version)
                if sub:
                    source = f"{source.rstrip('/')}/{sub}"
                local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(target), tracking_uri=turi)
    except MlflowException as e:
        raise ConfigError(f"{option}: {text}: not found in {turi} ({mlflow_message(e)})") from e
    return Path(local)


def download_model_uri(uri: str | Path, *, tracking_uri: str | None = None, dst: str | Path | None = None) -> Path:
    """The local ``.pt`` file behind a path, a ``runs:/`` URI or a ``models:/`` URI (see :func:`download_artifact_uri`).

    Raises:
        ConfigError: one line naming ``uri`` when it does not exist or holds no single ``.pt`` file.
    """
    return _find_pt(download_artifact_uri(uri, tracking_uri=tracking_uri, dst=dst, option="model"), str(uri))


def _parse_models_uri(client: MlflowClient, uri: str) -> tuple[str, str, str]:
    """``(name, version, sub_path)`` of ``models:/name@alias[/sub]`` or ``models:/name/version[/sub]``."""
    parts = uri[len("models:/"):].lstrip("/").split("/")
    head = parts[0]
    if "@" in head:
        name, alias = head.split("@", 1)
        if not name or not alias:
            raise ConfigError(f"{uri}: expected models:/<name>@<alias>")
        return name, str(client.get_model_version_by_alias(name, alias).version), "/".join(parts[1:])
    if len(parts) < 2 or not head:
        raise ConfigError(f"{uri}: expected models:/<name>@<alias> or models:/<name>/<version>")
    name, version = head, parts[1]
    if version == "latest":
        versions = client.search_model_versions(f"name = '{name}'")
        if not versions:
            raise ConfigError(f"{uri}: registered model {name!r} has no versions")
        version = str(max(int(v.version) for v in versions))
    elif not version.isdigit():
        raise ConfigError(f"{uri}: version {version!r} is not a number; use models:/<name>/<version> or models:/<name>@<alias>")
    else:
        client.get_model_version(name, version)
    return name, version, "/".join(parts[2:])


def _find_pt(path: Path, uri: str) -> Path:
    if path.is_file():
        return path
    candidates = sorted(path.rglob("*.pt"))
    preferred = [p for p in candidates if p.name == MODEL_FILE]
    if len(preferred) == 1:
        return preferred[0]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ConfigError(f"{uri}: holds no .pt model file")
    raise ConfigError(f"{uri}: holds several .pt files ({', '.join(p.name for p in candidates[:5])}); name one in the URI")


__all__ = ["download_artifact_uri", "download_model_uri"]
