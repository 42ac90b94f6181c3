"""ONNX export with a numerical check against PyTorch, and int8 quantisation.

Needs the optional extra: ``pip install 'autoprune[onnx]'`` (onnx and onnxruntime, imported lazily).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprune.errors import ConfigError, ModelError, one_line
from autoprune.graph.hooks import is_unhookable, model_copy
from autoprune.graph.layers import ExampleInput

log = logging.getLogger(__name__)

ONNX_EXTRA_HINT = "pip install 'autoprune[onnx]'"


def require_onnx(what: str) -> tuple[Any, Any]:
    """Import onnx and onnxruntime, or raise ConfigError naming the extra."""
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise ConfigError(f"{what}: needs the optional extra: {ONNX_EXTRA_HINT}") from e
    return onnx, onnxruntime


def as_args(example_input: ExampleInput) -> tuple[torch.Tensor, ...]:
    return example_input if isinstance(example_input, tuple) else (example_input,)


def input_names(model: nn.Module, n: int) -> list[str]:
    """The ONNX input names of ``model`` called with ``n`` tensors.

    The model's own ``input_names`` attribute when it names ``n`` inputs (e.g. a sentence
    encoder's ``("input_ids", "attention_mask")``), else ``input`` for one and ``input0``,
    ``input1``, ... for several.
    """
    names = getattr(model, "input_names", None)
    if isinstance(names, (tuple, list)) and len(names) == n and all(isinstance(x, str) for x in names):
        return list(names)
    return ["input"] if n == 1 else [f"input{i}" for i in range(n)]


def dynamic_axes(names: list[str], args: tuple[torch.Tensor, ...]) -> dict[str, dict[int, str]]:
    """Axes left dynamic in the exported graph: the batch axis of every input and of the output,
    and the sequence axis (1) of every 2-D integer input ``(N, L)`` (token ids, attention masks)."""
    axes: dict[str, dict[int, str]] = {}
    for name, a in zip(names, args):
        axes[name] = {0: "batch"}
        if a.dim() == 2 and not a.is_floating_point() and not a.is_complex() and a.dtype != torch.bool:
            axes[name][1] = "sequence"
    return axes | {"output": {0: "batch"}}


def export_model(model: nn.Module, args: tuple[torch.Tensor, ...], path: Path, opset: int | None) -> None:
    """TorchScript-based exporter: one self-contained file, no onnxscript needed.

    Inputs are named by :func:`input_names`; the batch axis is dynamic, and so is the sequence
    axis of token inputs (:func:`dynamic_axes`), so one file serves every batch size and length.

    Raises:
        ModelError: the exporter fails, in one line naming the module and the operation when the
            exporter names an operation it cannot export (:func:`unexportable_op`).
    """
    names = input_names(model, len(args))
    axes = dynamic_axes(names, args)
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings(), exporter_dump_silenced():
            warnings.simplefilter("ignore")  # the legacy exporter's DeprecationWarning and tracer warnings
            torch.onnx.export(
                exportable(model, args), args, str(path), dynamo=False, input_names=names, output_names=["output"],
                dynamic_axes=axes, opset_version=opset,
            )
    except Exception as e:
        where = unexportable_op(model, args, e)
        raise ModelError(f"cannot export {type(model).__name__} to ONNX: {where + ' (' if where else ''}"
                         f"{type(e).__name__}: {one_line(e, 200)}{')' if where else ''}") from e
    finally:
        model.train(was_training)


def exportable(model: nn.Module, args: tuple[torch.Tensor, ...]) -> nn.Module:
    """What the exporter is given: ``model``, or a :func:`torch.jit.trace` of it when a submodule is scripted or compiled.

    torch.onnx's TorchScript exporter (torch 2.13) refuses a ``torch.jit.script`` submodule called
    inside its own trace ("... is not part of the active trace") but exports the traced model, and
    ``torch.jit.trace`` refuses a ``torch.compile`` submodule ("a dynamo-optimized function"):
    those are replaced by the modules they compile (``_orig_mod``, the same computation) in a copy
    first. ``model`` itself is not modified.
    """
    inside = [(name, why) for name, m in model.named_modules() if name and (why := is_unhookable(m))]
    if not inside:
        return model
    compiled = [name for name, why in inside if why.startswith("compiled")]
    if compiled:
        model = model_copy(model)
        for name in compiled:
            parent, _, leaf = name.rpartition(".")
            holder = model.get_submodule(parent) if parent else model
            setattr(holder, leaf, getattr(holder, leaf)._orig_mod)
    with torch.no_grad():
        return torch.jit.trace(model, args, check_trace=False, strict=False)


#: The operation an exporter error names, e.g. ``Exporting the operator 'aten::sinc' to ONNX opset version 20 is not supported``.
_OPERATOR = re.compile(r"operator '?([A-Za-z_]\w*::[\w.]+)'?")


def unexportable_op(model: nn.Module, args: tuple[torch.Tensor, ...], error: BaseException) -> str:
    """Where the operation an exporter error names is called: ``"module 'act' (Sinc) calls aten::sinc"``, or ``""``.

    The operation (e.g. ``aten::sinc``) is read from the error; the module calling it from the
    scopes of a :func:`torch.jit.trace` of ``model`` (what the TorchScript exporter traces). Only
    the operation is named when the trace fails or does not contain it, nothing when the error
    names no operation.
    """
    found = _OPERATOR.search(str(error))
    if found is None:
        return ""
    op = found.group(1)
    scope = None
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, args, check_trace=False, strict=False)
        scope = next((n.scopeName() for n in traced.inlined_graph.nodes() if n.kind() == op), None)
    except Exception as e:  # noqa: BLE001 - naming the module is a courtesy: the operation is named anyway
        log.debug("tracing %s to find %s failed: %s", type(model).__name__, op, one_line(e))
    if scope is None:
        return f"it calls {op}, which the ONNX exporter does not support"
    name = scope.rsplit("/", 1)[-1].removeprefix("__module.") if scope else ""
    try:
        module = model.get_submodule(name) if name else model
    except AttributeError:
        module = None
    kind = f" ({type(module).__name__})" if module is not None else ""
    who = f"module {name!r}{kind}" if name else f"{type(model).__name__}.forward"
    return f"{who} calls {op}, which the ONNX exporter does not support"


@contextlib.contextmanager
def exporter_dump_silenced() -> Iterator[None]:
    """Keep the TorchScript exporter's IR dump off standard output while it exports.

    On a failed export, torch (2.13) prints the whole graph (``Torch IR graph at exception: ...``)
    to the process's standard output: its ``setup_onnx_logging`` tests the logging switch's
    function object instead of calling it, so the log is always on. File descriptor 1 points to
    ``/dev/null`` during the export (Python's own ``sys.stdout`` is flushed first); the error
    itself is raised as usual.
    """
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError, AttributeError):  # no file descriptor 1 (an embedded interpreter): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


_shared_pool_size: int | None = None  # intra-op threads of this process's global ONNX Runtime pool, once created


def shared_pool_threads() -> int | None:
    """Intra-op threads of this process's shared ONNX Runtime pool, or None if it was not created."""
    return _shared_pool_size


def ensure_shared_pool(onnxruntime: Any, threads: int) -> int:
    """Create ONNX Runtime's process-wide thread pool with ``threads`` intra-op threads, once.

    ONNX Runtime creates it once per process and cannot resize it; afterwards every session
    of the process must run on it (``use_per_session_threads = False``), which
    :func:`ort_session` does. Returns the pool's size (that of the first call).

    Raises:
        ConfigError: the pool cannot be created (ONNX Runtime created its environment
            without it before autoprune asked).
    """
    global _shared_pool_size
    if _shared_pool_size is None:
        try:
            onnxruntime.capi._pybind_state.set_global_thread_pool_sizes(threads, 1)
        except Exception as e:
            raise ConfigError(f"latency.backend_options.thread_pool: cannot create ONNX Runtime's shared pool ({one_line(e)}); use 'per-session'") from e
        _shared_pool_size = threads
    return _shared_pool_size


def ort_session(onnxruntime: Any, path: str | Path, threads: int, opts: Any = None) -> Any:
    """An ONNX Runtime CPU session on ``path``: ``opts`` or sequential execution with ``threads`` intra-op threads.

    Once the process's shared pool exists (:func:`ensure_shared_pool`), default options use it.
    """
    if opts is None:
        opts = onnxruntime.SessionOptions()
        opts.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        if _shared_pool_size is not None:
            opts.use_per_session_threads = False
        else:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
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

    The batch axis is dynamic, and so is the sequence axis of integer ``(N, L)`` inputs (token
    ids and attention masks of a sentence encoder). The model's training flag is restored afterwards.

    Args:
        model: The (pruned) model.
        example_input: Input tensor (or tuple of tensors, e.g. ``(input_ids, attention_mask)``
            int64 ``(N, L)`` each) to trace with and to check on.
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
    onnx, onnxruntime = require_onnx("export.onnx")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    args = as_args(example_input)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        export_model(model, args, tmp, opset)
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
            raise ModelError(f"{path}: the exported ONNX model is invalid ({one_line(e)})") from e
        session = ort_session(onnxruntime, path, max(1, torch.get_num_threads()))
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


def onnx_file_check(runtime: str = "ONNX (model.onnx)") -> Callable[[nn.Module, ExampleInput], None]:
    """The safety net's export check of the delivered ONNX file (:data:`autoprune.graph.safety.ExportCheck`).

    It exports a model as ``autoprune run`` delivers it (:func:`export_onnx`: export, ``onnx.checker``
    and one ONNX Runtime inference compared with PyTorch's) into a temporary folder and raises
    when that fails.

    Args:
        runtime: What a failure names (the check's ``runtime`` attribute), e.g. the setting that asks for the file.

    Raises:
        ConfigError: the onnx extra is missing (when the check is made, not when it runs).
    """
    require_onnx(runtime)

    def check(model: nn.Module, example_input: ExampleInput) -> None:
        with tempfile.TemporaryDirectory(prefix="autoprune-onnx-check-") as d:
            export_onnx(model, example_input, Path(d) / "model.onnx")

    check.label = "onnx-file"  # type: ignore[attr-defined]
    check.runtime = runtime  # type: ignore[attr-defined]
    return check


def quantize_onnx(src: str | Path, dst: str | Path, *, calibration: Iterable[np.ndarray] | None = None, per_channel: bool = True) -> Path:
    """Write an int8-quantised copy of the ONNX model ``src`` to ``dst``.

    With ``calibration`` batches: *static* post-training quantisation in ONNX Runtime's QDQ
    format (``onnxruntime.quantization.quantize_static``, MinMax calibration, int8 weights
    per output channel and int8 activations), after ONNX Runtime's recommended
    pre-processing (``quant_pre_process``). It makes convolutions run as int8 kernels; on
    a 2-core x86 CPU a ResNet-20 ran about 2x faster than fp32 at batch 1. Without
    ``calibration``: dynamic quantisation (weights only), which makes convolution nets
    slower on CPU: keep it for linear-heavy models. Whether the result is faster on the
    machine must be measured (``autoprune.measure.compare.compare_onnx_files``).

    Args:
        src: The fp32 ONNX file (one input).
        dst: Where to write the int8 file (parent folders are created).
        calibration: Input batches as float32 arrays ``(N, C, H, W)``, e.g. a few training batches.
        per_channel: Static only: per-output-channel weight scales.

    Returns:
        ``dst``.

    Raises:
        ConfigError: the onnx extra is missing, ``src`` does not exist, or ``calibration`` is empty.
        ModelError: ONNX Runtime's quantiser fails on the model.
    """
    require_onnx("export.quantize")
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise ConfigError(f"export.quantize: no ONNX file at {src}")
    batches = None if calibration is None else [np.ascontiguousarray(b, dtype=np.float32) for b in calibration]
    if batches is not None and not batches:
        raise ConfigError("export.quantize: calibration: expected at least one input batch, got none")
    if shared_pool_threads() is None:
        return _quantize(src, dst, batches, per_channel)
    # ONNX Runtime's quantiser opens plain sessions, which fail once this process's shared
    # thread pool exists (an ``onnxruntime`` latency backend made it): quantise in a fresh process.
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_quantize, src, dst, batches, per_channel).result()


def _quantize(src: Path, dst: Path, batches: list[np.ndarray] | None, per_channel: bool) -> Path:
    onnx, _ = require_onnx("export.quantize")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    dst.parent.mkdir(parents=True, exist_ok=True)
    hint = logging.getLogger()  # the quantiser advises pre-processing on the root logger each call
    quiet = _DropMessage("Please consider to run pre-processing")
    hint.addFilter(quiet)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    prep = dst.with_name(f".{dst.name}.{os.getpid()}.prep.onnx")
    try:
        if batches is None:
            quantize_dynamic(src, tmp, weight_type=QuantType.QInt8)
        else:
            input_name = onnx.load(str(src)).graph.input[0].name

            class _Batches(CalibrationDataReader):
                def __init__(self) -> None:
                    self._it = iter(batches)

                def get_next(self) -> dict | None:
                    batch = next(self._it, None)
                    return None if batch is None else {input_name: batch}

            quant_pre_process(str(src), str(prep), skip_symbolic_shape=True)
            quantize_static(
                prep, tmp, _Batches(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            )
        os.replace(tmp, dst)
    except Exception as e:
        raise ModelError(f"{src}: int8 quantisation failed ({type(e).__name__}: {one_line(e)})") from e
    finally:
        hint.removeFilter(quiet)
        tmp.unlink(missing_ok=True)
        prep.unlink(missing_ok=True)
    return dst


def onnx_predictions(path: str | Path, x: np.ndarray | torch.Tensor, *, batch_size: int = 256, threads: int | None = None) -> np.ndarray:
    """Outputs of the ONNX file at ``path`` on ``x``, computed by ONNX Runtime in batches.

    Args:
        path: An ONNX file with one input (e.g. an fp32 or int8 artifact).
        x: Inputs, shape ``(N, ...)`` float32.
        batch_size: Rows per session call.
        threads: Intra-op threads (None: ``torch.get_num_threads()``).

    Returns:
        The first output, shape ``(N, ...)`` (e.g. logits ``(N, classes)``).

    Raises:
        ConfigError: the onnx extra is missing or ``path`` does not exist.
    """
    _, onnxruntime = require_onnx("export.quantize")
    if not Path(path).is_file():
        raise ConfigError(f"export.quantize: no ONNX file at {path}")
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    session = ort_session(onnxruntime, path, threads or max(1, torch.get_num_threads()))
    name = session.get_inputs()[0].name
    outs = [session.run(None, {name: np.ascontiguousarray(arr[i : i + batch_size], dtype=np.float32)})[0] for i in range(0, len(arr), batch_size)]
    return np.concatenate(outs) if outs else np.zeros((0,))


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


__all__ = ["ensure_shared_pool", "shared_pool_threads", "ONNX_EXTRA_HINT", "export_onnx", "exporter_dump_silenced", "onnx_file_check", "onnx_predictions", "quantize_onnx", "require_onnx", "as_args", "export_model", "exportable", "unexportable_op", "ort_session", "input_names", "dynamic_axes"]
