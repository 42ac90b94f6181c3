"""What every backend that serves an ONNX file shares: export, open, check against torch, and how it is timed.

:class:`OnnxFileBackend` is the base of the ONNX Runtime and OpenVINO backends
(:mod:`autoprune.measure.onnxruntime`, :mod:`autoprune.measure.openvino`): its
:meth:`~OnnxFileBackend.prepare` exports the model with
:func:`autoprune.formats.onnx.export_model`, opens the file with the subclass's
:meth:`~OnnxFileBackend.prepare_file` and compares one inference with PyTorch's, so a model
the runtime computes differently fails before any search starts. A subclass keeps only its
own session or compile code.
"""

from __future__ import annotations

import abc
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from autoprune.errors import ModelError
from autoprune.graph.layers import ExampleInput
from autoprune.measure.backends import LatencyBackend, Runner, check_threads
from autoprune.measure.schedule import PairedSchedule

#: Largest allowed difference between a runtime's output and torch's, relative to the output's scale.
OUTPUT_TOLERANCE = 1e-3


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


class OnnxFileBackend(LatencyBackend):
    """A CPU runtime that serves the model as an ONNX file: export -> open -> compare to torch.

    Subclasses implement :meth:`prepare_file` (open a file, return a runner of one inference that
    returns the outputs: a sequence, or a mapping such as OpenVINO's results) and
    :meth:`settings`.

    Args:
        threads: Intra-op threads (None: ``torch.get_num_threads()`` now).

    Raises:
        ConfigError: ``threads`` is not an integer >= 1.
    """

    artifact = "onnx"
    runs_int8 = True
    #: Blocks of 10 calls of one model after one untimed call, then the other. Interleaving
    #: single calls lets each call start with the other model's weights in cache, which biased
    #: the ratio up (0.31 vs 0.26 blocked, 0.22 sequential; experiments/results/runtimes.md) and
    #: was noisier.
    paired_schedule = PairedSchedule(interleave="blocks", calls_per_round=10)

    def __init__(self, threads: int | None = None) -> None:
        check_threads(threads)
        self.threads = threads or max(1, torch.get_num_threads())

    @classmethod
    def channel_multiple(cls) -> int:
        """Channel counts run fastest in multiples of the CPU's SIMD block (:func:`simd_channel_block`)."""
        return simd_channel_block()

    @abc.abstractmethod
    def prepare_file(self, path: str | Path, example_input: ExampleInput) -> Runner:
        """A runner of one inference of the ONNX file at ``path`` (e.g. a QDQ int8 artifact) that returns the outputs.

        Raises:
            ModelError: the runtime cannot read the file.
        """

    def prepare(self, model: nn.Module, example_input: ExampleInput) -> Runner:
        """Export ``model`` to a temporary ONNX file, open it, check it against torch, return a runner of one inference.

        The check runs the example once on both: a model the runtime computes differently (an
        unsupported or mis-exported operator) fails here, not as silently wrong latency. The file
        is read only while this method runs.

        Args:
            model: The model (put in eval mode).
            example_input: Its input (a tensor ``(N, ...)`` or a tuple of them).

        Raises:
            ModelError: the export fails, or the runtime's output differs from torch's by more than
                :data:`OUTPUT_TOLERANCE` of the output's largest magnitude (naming both).
        """
        from autoprune.formats.onnx import as_args, export_model

        model.eval()
        args = as_args(example_input)
        with tempfile.TemporaryDirectory(prefix=f"autoprune-{self.name}-") as d:
            path = Path(d) / "model.onnx"
            export_model(model, args, path, None)
            infer = self.prepare_file(path, example_input)
        self._check_against_torch(model, args, infer)
        return infer

    def _check_against_torch(self, model: nn.Module, args: tuple[torch.Tensor, ...], infer: Runner) -> None:
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
                f"latency.backend {self.name!r}: {type(model).__name__}'s output on {self.name} differs from torch's by {diff:.3g} "
                f"(allowed {OUTPUT_TOLERANCE * scale:.3g}{shapes}); the runtime computes an operator differently: "
                "choose another latency.backend (e.g. torch) or simplify the model"
            )


__all__ = ["OUTPUT_TOLERANCE", "OnnxFileBackend", "simd_channel_block"]
