"""The pruned-model file: saving and loading pruned models without pickle.

A pruned model is stored as plain data (:func:`save_pruned`): how to build the dense
model, the recorded surgery (:func:`autoprune.graph.surgery.pruning_history`) and the state
dict. :func:`load_pruned` reads it with ``torch.load(weights_only=True)``, builds the
dense model again and replays the surgery, so no code is ever unpickled.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.errors import AutopruneError, ConfigError, ModelError, one_line
from autoprune.formats.torch_file import load_torch_file
from autoprune.graph.surgery import pruning_history, replay_history

#: The format tag of the file, also the ``format`` tag of a registered model version.
FORMAT = "autoprune-pruned/1"
#: The file's name inside a run's model folder (``runs:/<id>/model/model.pt``).
MODEL_FILE = "model.pt"
MODEL_DIR = "model"
_PLAIN_SCALARS = (str, int, float, bool, type(None))


def _check_plain(value: Any, where: str) -> None:
    """Raise ConfigError unless ``value`` is data ``torch.load(weights_only=True)`` can read back."""
    if isinstance(value, _PLAIN_SCALARS) or isinstance(value, torch.Tensor):
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise ConfigError(f"{where}: key {k!r} is a {type(k).__name__}; keys must be str or int")
            _check_plain(v, f"{where}.{k}")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    raise ConfigError(
        f"{where}: {type(value).__name__} cannot be stored without pickle; "
        "use str, int, float, bool, None, tensors, lists and dicts"
    )


# ------------------------------------------------------------------ save / load


def save_pruned(
    path: str | Path,
    model: nn.Module,
    *,
    model_name: str,
    in_channels: int,
    num_classes: int,
    input_size: int,
    extra: dict | None = None,
) -> Path:
    """Write ``model`` as one pickle-free ``.pt`` file that :func:`load_pruned` rebuilds.

    The file holds ``{"format", "model": {name, in_channels, num_classes, input_size},
    "history", "state_dict", "extra"}``. It is written to a temporary file first and then
    renamed, so a crash never leaves a half-written file under ``path``.

    Args:
        path: Destination file (parent folders are created).
        model: A model pruned by :func:`autoprune.graph.surgery.apply_policy` (or a dense one).
        model_name: Zoo name or ``"package.module:factory"`` that builds the dense model.
        in_channels, num_classes, input_size: Arguments of that factory.
        extra: Plain data stored alongside (policy, metrics, ...).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ConfigError: ``extra`` holds objects that would need pickle.
    """
    path = Path(path)
    _check_plain(extra, "extra")
    payload = {
        "format": FORMAT,
        "model": {"name": str(model_name), "in_channels": int(in_channels), "num_classes": int(num_classes), "input_size": int(input_size)},
        "history": pruning_history(model),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": extra,
    }
    _check_plain(payload["history"], "history")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_pruned(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild a model saved by :func:`save_pruned`, without unpickling anything.

    Args:
        path: The ``.pt`` file.

    Returns:
        ``(model, meta)``: the model in eval mode, and the file's ``format``, ``model``,
        ``history`` and ``extra`` entries.

    Raises:
        ModelError: missing, truncated or foreign file (an ``.onnx`` export names the ``.pt`` beside
            it), or weights that do not fit the model.
        ConfigError: the model name in the file cannot be built here (e.g. a plugin that is not
            importable).
    """
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        beside = path.with_name(path.name.split(".", 1)[0] + ".pt")
        where = f"the pruned model beside it, {str(beside)!r}" if beside.is_file() else "the pruned model (.pt) it was exported from"
        raise ModelError(f"{path}: an ONNX export, which autoprune cannot rebuild as a PyTorch model; give {where}")
    if not path.is_file():
        raise ModelError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    data = load_torch_file(path, context=f"{path}: cannot read as an autoprune pruned model")
    tag = data.get("format") if isinstance(data, dict) else None
    if tag != FORMAT:
        raise ModelError(f"{path}: not an autoprune pruned model (format tag {tag!r}, expected {FORMAT!r}); "
                         "pruned models are written by `autoprune apply` and `autoprune run`")
    missing = [k for k in ("model", "history", "state_dict") if k not in data]
    if missing:
        raise ModelError(f"{path}: incomplete pruned-model file, missing {', '.join(missing)}")
    spec = data["model"]
    try:
        name = spec["name"]
        model = _build(name, spec)
    except (KeyError, TypeError) as e:
        raise ModelError(f"{path}: bad 'model' entry {spec!r}; expected name, in_channels, num_classes, input_size") from e
    except AutopruneError as e:
        raise type(e)(f"{path}: {e}") from e
    example = torch.zeros(1, int(spec["in_channels"]), int(spec["input_size"]), int(spec["input_size"]))
    try:
        replay_history(model, data["history"], example)
    except Exception as e:  # history recorded on another architecture: KeyError, IndexError, RuntimeError...
        raise ModelError(f"{path}: the pruning history does not fit model {name!r} ({type(e).__name__}: {one_line(e)})") from e
    try:
        model.load_state_dict(data["state_dict"])
    except (RuntimeError, TypeError, AttributeError) as e:
        raise ModelError(f"{path}: the saved weights do not fit the rebuilt model {name!r} ({one_line(e)})") from e
    meta = {k: v for k, v in data.items() if k != "state_dict"}
    return model.eval(), meta


def _build(name: str, spec: dict) -> nn.Module:
    from autoprune.zoo import build_model

    return build_model(name, in_channels=int(spec["in_channels"]), num_classes=int(spec["num_classes"]), input_size=int(spec["input_size"]))


__all__ = ["FORMAT", "MODEL_DIR", "MODEL_FILE", "load_pruned", "save_pruned"]
