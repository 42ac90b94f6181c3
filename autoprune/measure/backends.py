"""Latency backends: the protocol, the registry of their names, and PyTorch eager.

A backend turns a model into a zero-argument runner of one inference; all one-off work
(export, compilation, session) happens in ``prepare``. Serving runtimes live in their own
modules (:mod:`autoprune.measure.onnxruntime`, :mod:`autoprune.measure.openvino`) and are
imported only when named, so their extras stay optional.
"""

from __future__ import annotations

import inspect
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from autoprune.errors import ConfigError, ModelError
from autoprune.graph.layers import ExampleInput
from autoprune.registry import Registry

#: Intra-op threads used for timing unless told otherwise: the one default of every ``threads``
#: argument in :mod:`autoprune.measure`, of :class:`autoprune.objective.LatencySettings` and of ``latency.threads``.
DEFAULT_THREADS = 2

Runner = Callable[[], None]
"""A zero-argument callable that runs one inference of a prepared model."""



@runtime_checkable
class LatencyBackend(Protocol):
    """Runs a model for timing. ``prepare`` does all one-off work (compilation, session).

    A backend may also define ``settings() -> dict``: the runtime settings (threads,
    spinning, optimisation level, precision, library version) that every result
    measured on it is recorded with (see :func:`backend_settings`), and
    ``runs_on_calling_thread``: True when an inference computes entirely on the calling
    thread (then CPU-time clocks are valid; see :meth:`PairedTimer.ratio`).
    """

    name: str

    def prepare(self, model: nn.Module, example_input: ExampleInput) -> Runner:
        """Return a zero-argument callable that runs one inference of ``model`` on ``example_input``."""
        ...


class TorchEagerBackend:
    """PyTorch eager mode: ``model.eval()`` and ``torch.inference_mode()``.

    Args:
        threads: Intra-op threads recorded in :meth:`settings` (the timers set
            ``torch.set_num_threads`` themselves; None: the current count).
    """

    name = "torch"

    def __init__(self, threads: int | None = None) -> None:
        if threads is not None:
            if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
                raise ConfigError(f"latency.threads: expected an integer >= 1, got {threads!r}")
        self.threads = threads or torch.get_num_threads()

    @property
    def runs_on_calling_thread(self) -> bool:
        """With one thread, eager PyTorch computes on the caller (what a ``thread`` clock needs)."""
        return self.threads == 1

    def settings(self) -> dict[str, object]:
        """The runtime settings every result measured on this backend is recorded with."""
        return {"backend": self.name, "version": torch.__version__, "threads": self.threads, "mode": "eager, inference_mode"}

    def prepare(self, model: nn.Module, example_input: ExampleInput) -> Runner:
        """Put ``model`` in eval mode and return a runner; the model is not copied."""
        model.eval()
        args = example_input if isinstance(example_input, tuple) else (example_input,)

        def run() -> None:
            with torch.inference_mode():
                model(*args)

        return run


#: The latency backends: the one list of their names (``latency.backend`` is checked against it).
BACKENDS: Registry[Callable[..., LatencyBackend]] = Registry(
    "latency backend",
    "latency.backend",
    {
        "torch": "autoprune.measure.latency:TorchEagerBackend",
        "onnxruntime": "autoprune.measure.onnxruntime:OnnxRuntimeBackend",
        "openvino": "autoprune.measure.openvino:OpenVinoBackend",
    },
    extras={"onnxruntime": "onnx", "openvino": "openvino"},
)


def register_backend(name: str, factory: Callable[..., LatencyBackend] | str) -> None:
    """Make a backend available to :func:`get_backend` and to configs under ``name``.

    Args:
        name: The name a config uses (``latency.backend: NAME``).
        factory: A callable returning a :class:`LatencyBackend` (it may accept ``threads=``
            and backend options as keywords), or its ``"package.module:Class"`` reference.

    Raises:
        ConfigError: an empty name or one containing ``:``.
    """
    BACKENDS.register(name, factory)


def get_backend(name: str | LatencyBackend, *, threads: int | None = None, **options: object) -> LatencyBackend:
    """Return a new backend by registered name or ``"package.module:Class"`` (an instance is returned unchanged).

    Args:
        name: Registered name, reference, or a backend instance.
        threads: Intra-op threads, passed as ``threads=`` when the factory accepts it.
        **options: Backend settings (e.g. ``spinning=True`` for ``onnxruntime``,
            ``performance_hint="LATENCY"`` for ``openvino``), passed as keywords.

    Raises:
        ConfigError: unknown backend name, its optional extra is not installed (naming it),
            or an option the backend does not take or accept.
    """
    if not isinstance(name, str):
        if options:
            raise ConfigError(f"latency.backend_options: options {sorted(options)} given with a backend instance; configure the instance instead")
        return name
    factory = BACKENDS.get(name)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [k for k in options if k not in params and not takes_any]
    if unknown:
        allowed = [k for k, p in params.items() if k != "threads" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
        raise ConfigError(f"latency.backend_options: {name!r} has no option {unknown[0]!r}; allowed: {', '.join(allowed) or 'none'}")
    kwargs = dict(options)
    if threads is not None and ("threads" in params or takes_any):
        kwargs["threads"] = threads
    return factory(**kwargs)


#: Largest allowed difference between a runtime's output and torch's, relative to the output's scale.
OUTPUT_TOLERANCE = 1e-3


def prepare_exported(
    backend: str,
    model: nn.Module,
    example_input: ExampleInput,
    open_file: Callable[[Path, tuple[torch.Tensor, ...]], Callable[[], Any]],
) -> Runner:
    """Export ``model`` to a temporary ONNX file, open it on a runtime, check it against torch, return a runner.

    The one path of every serving backend's ``prepare`` (ONNX Runtime, OpenVINO): export with
    :func:`autoprune.formats.onnx.export_model`, then ``open_file(path, args)`` (the backend's
    ``prepare_file``) returns a runner of one inference that returns the outputs: a sequence, or
    a mapping such as OpenVINO's results (the first output is compared). The check runs the
    example once on both: a model the runtime computes differently (an unsupported or
    mis-exported operator) fails here, before any search starts, not as silently wrong latency.

    Args:
        backend: The backend's name, for messages.
        model: The model (put in eval mode).
        example_input: Its input (a tensor ``(N, ...)`` or a tuple of them).
        open_file: Opens the exported file; may read it only while this function runs.

    Returns:
        A zero-argument runner of one inference.

    Raises:
        ModelError: the export fails, or the runtime's output differs from torch's by more than
            :data:`OUTPUT_TOLERANCE` of the output's largest magnitude (naming both).
    """
    from autoprune.formats.onnx import as_args, export_model

    model.eval()
    args = as_args(example_input)
    with tempfile.TemporaryDirectory(prefix=f"autoprune-{backend}-") as d:
        path = Path(d) / "model.onnx"
        export_model(model, args, path, None)
        infer = open_file(path, args)
    with torch.inference_mode():
        expected = model(*args)
    expected = (expected[0] if isinstance(expected, (tuple, list)) else expected).detach().cpu().numpy()
    outputs = infer()
    got = np.asarray(next(iter(outputs.values())) if isinstance(outputs, Mapping) else outputs[0], dtype=np.float64)
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    diff = float(np.abs(got - expected).max(initial=0.0)) if got.shape == expected.shape else float("inf")
    if not diff <= OUTPUT_TOLERANCE * scale:
        shapes = "" if got.shape == expected.shape else f"; shapes {tuple(got.shape)} vs torch {tuple(expected.shape)}"
        raise ModelError(
            f"latency.backend {backend!r}: {type(model).__name__}'s output on {backend} differs from torch's by {diff:.3g} "
            f"(allowed {OUTPUT_TOLERANCE * scale:.3g}{shapes}); the runtime computes an operator differently: "
            "choose another latency.backend (e.g. torch) or simplify the model"
        )

    return infer


def simd_channel_block() -> int:
    """Channels per SIMD block in the blocked layouts of CPU runtimes on this machine: 16 with AVX-512, else 8.

    ONNX Runtime's MLAS (NCHWc) and OpenVINO's oneDNN (nChw8c / nChw16c) reorder convolution
    tensors into blocks of this many channels; a channel count that is not a multiple of it
    is padded and reordered at run time, which can make a *pruned* layer slower than the dense
    one (see ``experiments/results/runtimes.md``).
    """
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return 16 if " avx512f" in flags else 8


def channel_multiple(name: str | LatencyBackend) -> int | None:
    """The channel multiple a backend runs fastest with (``pruning.round_to: auto``), or None for no rounding.

    A backend (class or instance) states it by a ``channel_multiple()`` method; eager PyTorch
    does not (its batch-1 latency is per-module overhead, not layout).

    Raises:
        ConfigError: an unknown backend name.
    """
    found = BACKENDS.get(name) if isinstance(name, str) else name
    method = getattr(found, "channel_multiple", None)
    return int(method()) if callable(method) else None


def backend_settings(backend: LatencyBackend) -> dict[str, object]:
    """The settings a result measured on ``backend`` is recorded with (at least its name).

    Uses the backend's ``settings()`` when it has one (every built-in does).
    """
    settings = getattr(backend, "settings", None)
    found = dict(settings()) if callable(settings) else {}
    return {"backend": getattr(backend, "name", type(backend).__name__), **found}


__all__ = ["BACKENDS", "LatencyBackend", "Runner", "TorchEagerBackend", "backend_settings", "OUTPUT_TOLERANCE", "channel_multiple", "get_backend", "prepare_exported", "register_backend", "simd_channel_block"]
