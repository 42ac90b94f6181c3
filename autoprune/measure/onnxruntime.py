"""The ``onnxruntime`` latency backend: the model exported to ONNX and run by an ONNX Runtime CPU session.

Needs the optional extra: ``pip install 'autoprune[onnx]'``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from autoprune.formats.onnx import as_args, export_model, ort_session, require_onnx
from autoprune.graph.layers import ExampleInput
from autoprune.measure.latency import Runner


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
        _, self._ort = require_onnx("latency.backend 'onnxruntime'")
        self.threads = threads

    def prepare(self, model: nn.Module, example_input: ExampleInput) -> Runner:
        """Export ``model`` (eval mode), open a session on it and return a runner of one inference."""
        model.eval()
        args = as_args(example_input)
        with tempfile.TemporaryDirectory(prefix="autoprune-ort-") as d:
            path = Path(d) / "model.onnx"
            export_model(model, args, path, None)
            session = ort_session(self._ort, path, self.threads or max(1, torch.get_num_threads()))
        feeds = {i.name: a.detach().cpu().numpy() for i, a in zip(session.get_inputs(), args)}
        run_session = session.run

        def run() -> None:
            run_session(None, feeds)

        return run


__all__ = ["OnnxRuntimeBackend"]
