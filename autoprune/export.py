"""Saving and loading pruned models without pickle, ONNX export with a numerical check, int8 quantisation.

A pruned model is stored as plain data (:func:`save_pruned`): how to build the dense
model, the recorded surgery (:func:`autoprune.surgery.pruning_history`) and the state
dict. :func:`load_pruned` reads it with ``torch.load(weights_only=True)``, builds the
dense model again and replays the surgery, so no code is ever unpickled.

ONNX needs the optional extra: ``pip install 'autoprune[onnx]'``. Importing this module
registers the ``onnxruntime`` latency backend (:class:`OnnxRuntimeBackend`) with
:mod:`autoprune.measure`.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprune.errors import AutopruneError, ConfigError, ModelError
from autoprune.measure import ExampleInput, Runner, register_backend
from autoprune.surgery import pruning_history, replay_history

log = logging.getLogger(__name__)

FORMAT = "autoprune-pruned/1"
ONNX_EXTRA_HINT = "pip install 'autoprune[onnx]'"
_PLAIN_SCALARS = (str, int, float, bool, type(None))


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
        model: A model pruned by :func:`autoprune.surgery.apply_policy` (or a dense one).
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
        ModelError: missing, truncated or foreign file, or weights that do not fit the model.
        ConfigError: the model name in the file cannot be built here (e.g. a plugin that is not
            importable).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f" ({found.group(1)})" if found else ""
        raise ModelError(
            f"{path}: cannot read as an autoprune pruned model: it holds pickled Python objects{what}, "
            "which are never loaded; only files written by save_pruned are accepted"
        ) from e
    except Exception as e:  # zip/EOF errors of truncated or corrupt files
        raise ModelError(
            f"{path}: cannot read as an autoprune pruned model: truncated or corrupt ({type(e).__name__}: {_one_line(e, 120)})"
        ) from e
    tag = data.get("format") if isinstance(data, dict) else None
    if tag != FORMAT:
        raise ModelError(f"{path}: not an autoprune pruned model (format tag {tag!r}, expected {FORMAT!r}); save it with save_pruned")
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
        raise ModelError(f"{path}: the pruning history does not fit model {name!r} ({type(e).__name__}: {_one_line(e)})") from e
    try:
        model.load_state_dict(data["state_dict"])
    except (RuntimeError, TypeError, AttributeError) as e:
        raise ModelError(f"{path}: the saved weights do not fit the rebuilt model {name!r} ({_one_line(e)})") from e
    meta = {k: v for k, v in data.items() if k != "state_dict"}
    return model.eval(), meta


def _build(name: str, spec: dict) -> nn.Module:
    from autoprune.zoo import build_model

    return build_model(name, in_channels=int(spec["in_channels"]), num_classes=int(spec["num_classes"]), input_size=int(spec["input_size"]))


# ------------------------------------------------------------------ ONNX


def _require_onnx(what: str) -> tuple[Any, Any]:
    """Import onnx and onnxruntime, or raise ConfigError naming the extra."""
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise ConfigError(f"{what}: needs the optional extra: {ONNX_EXTRA_HINT}") from e
    return onnx, onnxruntime


def _as_args(example_input: ExampleInput) -> tuple[torch.Tensor, ...]:
    return example_input if isinstance(example_input, tuple) else (example_input,)


def _input_names(n: int) -> list[str]:
    return ["input"] if n == 1 else [f"input{i}" for i in range(n)]


def _export(model: nn.Module, args: tuple[torch.Tensor, ...], path: Path, opset: int | None) -> None:
    """TorchScript-based exporter: one self-contained file, a dynamic batch axis, no onnxscript needed."""
    names = _input_names(len(args))
    axes = {n: {0: "batch"} for n in names} | {"output": {0: "batch"}}
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's DeprecationWarning and tracer warnings
            torch.onnx.export(
                model, args, str(path), dynamo=False, input_names=names, output_names=["output"],
                dynamic_axes=axes, opset_version=opset,
            )
    except Exception as e:
        raise ModelError(f"export.onnx: cannot export {type(model).__name__} to ONNX ({type(e).__name__}: {_one_line(e)})") from e
    finally:
        model.train(was_training)


def _session(onnxruntime: Any, path: str | Path, threads: int) -> Any:
    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def export_onnx(
    model: nn.Module,
    example_input: ExampleInput,
    path: str | Path,
    *,
    check: bool = True,
    opset: int | None = None,
    atol: float = 1e-4,
) -> dict:
    """Export ``model`` to ONNX and check that ONNX Runtime computes the same outputs.

    The batch axis is dynamic. The model's training flag is restored afterwards.

    Args:
        model: The (pruned) model.
        example_input: Input tensor (or tuple of tensors) to trace with and to check on.
        path: Destination ``.onnx`` file (parent folders are created).
        check: Validate the file with ``onnx.checker`` and compare ONNX Runtime's outputs
            with PyTorch's.
        opset: ONNX opset (None: the exporter's default).
        atol: Largest allowed absolute difference in the check.

    Returns:
        ``{"path": str, "max_abs_diff": float | None, "opset": int}``.

    Raises:
        ConfigError: onnx or onnxruntime is not installed.
        ModelError: the export fails or the outputs differ by more than ``atol``.
    """
    onnx, onnxruntime = _require_onnx("export.onnx")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    args = _as_args(example_input)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        _export(model, args, tmp, opset)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    proto = onnx.load(str(path))
    opset_used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), -1)
    diff = None
    if check:
        try:
            onnx.checker.check_model(proto)
        except onnx.checker.ValidationError as e:
            raise ModelError(f"{path}: the exported ONNX model is invalid ({_one_line(e)})") from e
        session = _session(onnxruntime, path, max(1, torch.get_num_threads()))
        feeds = {i.name: a.detach().cpu().numpy() for i, a in zip(session.get_inputs(), args)}
        got = session.run(None, feeds)[0]
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                want = model(*args)
        finally:
            model.train(was_training)
        diff = float(np.max(np.abs(got - want.detach().cpu().numpy()))) if got.size else 0.0
        if not diff <= atol:
            raise ModelError(f"{path}: ONNX Runtime output differs from PyTorch by {diff:.3g} (allowed {atol:g})")
    return {"path": str(path), "max_abs_diff": diff, "opset": int(opset_used)}


def quantize_onnx(src: str | Path, dst: str | Path) -> Path:
    """Write a dynamically int8-quantised copy of the ONNX model ``src`` to ``dst``.

    Raises:
        ConfigError: the onnx extra is missing, or ``src`` does not exist.
        ModelError: ONNX Runtime's quantiser fails on the model.
    """
    _require_onnx("export.quantize")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise ConfigError(f"export.quantize: no ONNX file at {src}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    hint = logging.getLogger()  # the quantiser advises pre-processing on the root logger each call
    quiet = _DropMessage("Please consider to run pre-processing")
    hint.addFilter(quiet)
    try:
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
    except Exception as e:
        raise ModelError(f"{src}: int8 quantisation failed ({type(e).__name__}: {_one_line(e)})") from e
    finally:
        hint.removeFilter(quiet)
    return dst


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


# ------------------------------------------------------------------ latency backend


class OnnxRuntimeBackend:
    """Latency backend: the model exported to ONNX and run by an ONNX Runtime CPU session.

    Args:
        threads: Intra-op threads of the session (None: ``torch.get_num_threads()`` when
            :meth:`prepare` is called).

    Raises:
        ConfigError: onnx or onnxruntime is not installed.
    """

    name = "onnxruntime"

    def __init__(self, threads: int | None = None) -> None:
        _, self._ort = _require_onnx("latency.backend 'onnxruntime'")
        self.threads = threads

    def prepare(self, model: nn.Module, example_input: ExampleInput) -> Runner:
        """Export ``model`` (eval mode), open a session on it and return a runner of one inference."""
        model.eval()
        args = _as_args(example_input)
        with tempfile.TemporaryDirectory(prefix="autoprune-ort-") as d:
            path = Path(d) / "model.onnx"
            _export(model, args, path, None)
            session = _session(self._ort, path, self.threads or max(1, torch.get_num_threads()))
        feeds = {i.name: a.detach().cpu().numpy() for i, a in zip(session.get_inputs(), args)}
        run_session = session.run

        def run() -> None:
            run_session(None, feeds)

        return run


register_backend("onnxruntime", OnnxRuntimeBackend)

__all__ = ["FORMAT", "OnnxRuntimeBackend", "export_onnx", "load_pruned", "quantize_onnx", "save_pruned"]
