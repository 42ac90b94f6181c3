"""Saved PPO agents: an SB3 zip plus a manifest that says what the agent observes.

A bundle is a folder::

    agent/
      agent.zip    # stable-baselines3's own format (PPO.save / PPO.load)
      agent.json   # autoprune-agent/1: observation features and their normalisation, action, provenance

The observation normalisation is fixed, not learnt: :class:`autoprune.search.env.LayerPruningEnv`
scales every feature from model-relative quantities (relative depth, share of MACs and
parameters, log2 channels / 10, budget fractions...) into ``[-1, 2]``. There are no running
statistics to carry, and the same numbers mean the same thing on a model of any size, which
is what lets an agent act on a model it was not trained on. The manifest lists the features
so that an agent is refused when this version of the environment observes something else.

SB3 zips may hold pickled Python objects, which SB3's loader unpickles: an agent file is a
code-like artifact, to be trusted like code.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from autoprune.errors import ConfigError, PolicyError
from autoprune.paths import write_json_atomic

AGENT_FORMAT = "autoprune-agent/1"
AGENT_ZIP = "agent.zip"
AGENT_MANIFEST = "agent.json"
NORMALISATION = (
    "fixed, in LayerPruningEnv: model-relative features scaled to [-1, 2] (depth, resolution, shares of MACs "
    "and params, log2(channels)/10, kernel/7, stride/2, budget fractions); no running statistics"
)


def manifest(*, trained_on: dict[str, Any] | None = None, episodes: int | None = None) -> dict[str, Any]:
    """The manifest of an agent trained on this version's environment."""
    import stable_baselines3

    from autoprune import __version__
    from autoprune.search.env import FEATURES, OBS_DIM

    return {
        "format": AGENT_FORMAT,
        "algorithm": "PPO",
        "observation": {"features": list(FEATURES), "dim": OBS_DIM, "low": -1.0, "high": 2.0, "normalisation": NORMALISATION},
        "action": "Box(-1, 1): ratio = (a + 1) / 2 * max_ratio for a unit; a > 0 drops a block",
        "trained_on": trained_on or {},
        "episodes": episodes,
        "versions": {"autoprune": __version__, "stable_baselines3": stable_baselines3.__version__},
    }


def save_bundle(model: Any, folder: str | Path, *, trained_on: dict[str, Any] | None = None, episodes: int | None = None) -> Path:
    """Write ``agent.zip`` and ``agent.json`` into ``folder`` (created); returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (AGENT_ZIP + ".tmp.zip")
    model.save(tmp)
    tmp.replace(folder / AGENT_ZIP)
    write_json_atomic(folder / AGENT_MANIFEST, manifest(trained_on=trained_on, episodes=episodes))
    return folder


def find_bundle(path: str | Path, *, source: str | None = None) -> Path:
    """The bundle folder at a local folder or its ``agent.zip`` (searched below it too); its manifest is checked.

    ``runs:/`` and ``models:/`` URIs are downloaded first by :func:`autoprune.app.uris.locate_bundle`.

    Raises:
        ConfigError: nothing there, or no agent.zip in it.
        PolicyError: the manifest is missing or does not fit (:func:`check_manifest`).
    """
    path = Path(path)
    text = str(path) if source is None else source
    if not path.exists():
        raise ConfigError(f"--agent: {text!r} does not exist; expected an agent folder (agent.zip + agent.json) or runs:/<run_id>/agent")
    if path.is_file():
        path = path.parent
    if not (path / AGENT_ZIP).is_file():
        found = sorted(path.rglob(AGENT_ZIP))
        if not found:
            raise ConfigError(f"--agent: {text!r} holds no {AGENT_ZIP}; expected the folder a PPO search saves (search.params.save_agent)")
        path = found[0].parent
    check_manifest(path, text)
    return path


def check_manifest(folder: Path, source: str) -> dict[str, Any]:
    """Read and check an agent's manifest against this version's environment.

    Raises:
        PolicyError: unreadable or truncated manifest, another format, or other observation features.
    """
    from autoprune.search.env import FEATURES

    if not (folder / AGENT_MANIFEST).is_file():
        raise PolicyError(f"--agent: {source!r} has no {AGENT_MANIFEST}, so what the agent observes is unknown; "
                          "save agents with this version of autoprune")
    try:
        doc = json.loads((folder / AGENT_MANIFEST).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PolicyError(f"--agent: {source!r}: {AGENT_MANIFEST} is not valid JSON ({e})") from e
    if not isinstance(doc, dict) or doc.get("format") != AGENT_FORMAT:
        fmt = doc.get("format") if isinstance(doc, dict) else None
        raise PolicyError(f"--agent: {source!r} has format {fmt!r}; this version reads {AGENT_FORMAT!r}")
    features = (doc.get("observation") or {}).get("features")
    if features != list(FEATURES):
        raise PolicyError(f"--agent: {source!r} observes features {features}; this version's environment observes "
                          f"{list(FEATURES)}; train the agent again with this version")
    return doc


def load_agent(folder: str | Path, *, env: Any = None, **kwargs: Any) -> Any:
    """Load the PPO agent of a bundle through SB3's own loader (after checking the manifest).

    Raises:
        PolicyError: a truncated or corrupted zip, or a manifest that does not fit.
    """
    from stable_baselines3 import PPO

    folder = Path(folder)
    check_manifest(folder, str(folder))
    path = folder / AGENT_ZIP
    try:
        return PPO.load(path, env=env, device="cpu", **kwargs)
    except (zipfile.BadZipFile, EOFError, KeyError, ValueError, RuntimeError, OSError) as e:
        first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise PolicyError(f"--agent: {str(path)!r} is truncated or not an SB3 agent ({type(e).__name__}: {first})") from e


__all__ = ["AGENT_FORMAT", "check_manifest", "find_bundle", "load_agent", "manifest", "save_bundle"]
