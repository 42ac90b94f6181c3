"""The ``openvino`` latency backend: the model exported to ONNX and compiled by OpenVINO Runtime for the CPU.

Needs the optional extra: ``pip install 'autoprune[openvino]'`` (and ``onnx`` for the export).

Follows OpenVINO's Python API: ``Core.read_model`` on the ONNX file, the input reshaped to
the measured (static) shape, ``Core.compile_model(model, "CPU", {"PERFORMANCE_HINT": ...,
"INFERENCE_NUM_THREADS": ..., "INFERENCE_PRECISION_HINT": ...})`` and one
``InferRequest`` per prepared model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autoprune.errors import ConfigError, ModelError, one_line
from autoprune.graph.layers import ExampleInput
from autoprune.measure.backends import Runner
from autoprune.measure.onnx_file import OnnxFileBackend

OPENVINO_EXTRA_HINT = "pip install 'autoprune[openvino]'"
PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT")
PRECISIONS = ("f32", "bf16", "f16")


def require_openvino(what: str) -> Any:
    """Import ``openvino``, or raise ConfigError naming the extra.

    Raises:
        ConfigError: openvino is not installed.
    """
    try:
        import openvino
    except ImportError as e:
        raise ConfigError(f"{what}: needs the optional extra: {OPENVINO_EXTRA_HINT}") from e
    return openvino


class OpenVinoBackend(OnnxFileBackend):
    """Latency backend: OpenVINO Runtime on the CPU, compiled for one static input shape.

    Export, the check against torch, the channel multiple and the blocked paired schedule come
    from :class:`~autoprune.measure.onnx_file.OnnxFileBackend`; this class compiles the file.

    Args:
        threads: ``INFERENCE_NUM_THREADS`` (None: ``torch.get_num_threads()`` now).
        performance_hint: ``LATENCY`` (default: one stream, for single requests) or ``THROUGHPUT``.
        precision: ``INFERENCE_PRECISION_HINT``: ``f32`` (default), ``bf16`` or ``f16``
            (the CPU may reject a precision it lacks; that is a ConfigError at prepare time).

    Raises:
        ConfigError: openvino (or onnx) is not installed, or an option is invalid.
    """

    name = "openvino"

    def __init__(self, threads: int | None = None, *, performance_hint: str = "LATENCY", precision: str = "f32") -> None:
        self._ov = require_openvino("latency.backend 'openvino'")
        try:
            import onnx  # noqa: F401  (the backend reads the exported ONNX file)
        except ImportError as e:
            raise ConfigError("latency.backend 'openvino': needs the optional extra: pip install 'autoprune[onnx]'") from e
        super().__init__(threads)
        hint = str(performance_hint).upper()
        if hint not in PERFORMANCE_HINTS:
            raise ConfigError(
                f"latency.backend_options.performance_hint: unknown hint {performance_hint!r}; allowed: {', '.join(PERFORMANCE_HINTS)}"
            )
        if precision not in PRECISIONS:
            raise ConfigError(f"latency.backend_options.precision: unknown precision {precision!r}; allowed: {', '.join(PRECISIONS)}")
        self.performance_hint = hint
        self.precision = precision
        self._core = self._ov.Core()

    def config(self) -> dict[str, Any]:
        """The properties passed to ``Core.compile_model``."""
        return {
            "PERFORMANCE_HINT": self.performance_hint,
            "INFERENCE_NUM_THREADS": self.threads,
            "INFERENCE_PRECISION_HINT": self.precision,
        }

    def settings(self) -> dict[str, Any]:
        """The runtime settings every result measured on this backend is recorded with."""
        return {
            "backend": self.name,
            "version": self._ov.__version__,
            "device": "CPU",
            "threads": self.threads,
            "performance_hint": self.performance_hint,
            "precision": self.precision,
        }

    def compile(self, path: str | Path, shapes: list[tuple[int, ...]]) -> Any:
        """Read the ONNX file at ``path``, fix its inputs to ``shapes`` and compile it for the CPU.

        Raises:
            ConfigError: OpenVINO rejects a setting (e.g. a precision this CPU lacks).
            ModelError: OpenVINO cannot read or compile the model.
        """
        ov = self._ov
        try:
            model = self._core.read_model(str(path))
            model.reshape({inp: ov.PartialShape(list(shape)) for inp, shape in zip(model.inputs, shapes)})
        except Exception as e:
            raise ModelError(f"latency.backend 'openvino': cannot read the exported model ({type(e).__name__}: {one_line(e)})") from e
        try:
            return self._core.compile_model(model, "CPU", self.config())
        except Exception as e:
            message = one_line(e)
            if "property" in message.lower() or "Wrong value" in message:
                raise ConfigError(f"latency.backend_options: OpenVINO rejects {self.config()} ({message})") from e
            raise ModelError(f"latency.backend 'openvino': cannot compile the model ({type(e).__name__}: {message})") from e

    def prepare_file(self, path: str | Path, example_input: ExampleInput) -> Runner:
        """A runner of one inference of the ONNX file at ``path`` (e.g. a QDQ int8 artifact) on ``example_input``.

        The runner returns OpenVINO's outputs (the timers ignore them; :meth:`prepare` checks them).

        Raises:
            ModelError: OpenVINO cannot read or compile the file.
        """
        from autoprune.formats.onnx import as_args

        args = as_args(example_input)
        request = self.compile(path, [tuple(a.shape) for a in args]).create_infer_request()
        for i, a in enumerate(args):
            request.get_input_tensor(i).data[:] = a.detach().cpu().numpy()
        return request.infer


__all__ = ["OPENVINO_EXTRA_HINT", "OpenVinoBackend", "PERFORMANCE_HINTS", "PRECISIONS", "require_openvino"]
