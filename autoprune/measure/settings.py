"""``LatencySettings``: how latency is measured during a search, and the paired schedule it gives."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

from autoprune.graph.layers import ExampleInput
from autoprune.graph.safety import ExportCheck
from autoprune.measure.backends import DEFAULT_THREADS, backend_class, get_backend, settings_label
from autoprune.measure.decoder_latency import NEW_TOKENS, PROMPT_TOKENS
from autoprune.measure.schedule import PairedSchedule


@dataclass(frozen=True)
class LatencySettings:
    """How latency is measured during search: paired against dense, at ``batch_size``.

    These defaults are the only ones: the config's ``latency`` section reads them.

    Attributes:
        backend: Latency backend name (:data:`autoprune.measure.backends.BACKENDS`) or ``"package.module:Class"``.
        batch_size: ``N`` of the timed input.
        threads: Intra-op threads while timing (:data:`autoprune.measure.backends.DEFAULT_THREADS`).
        warmup: Untimed (reference, candidate) pairs first.
        rounds: Rounds of a paired measurement (the most, with ``rel_ci``).
        min_rounds: Rounds before ``rel_ci`` may stop early.
        rel_ci: Stop once the 95% CI half-width relative to the ratio is at most this.
        backend_options: The backend's own settings (:func:`autoprune.measure.backends.get_backend`
            keywords, e.g. ``{"spinning": True}`` for ``onnxruntime``); None or empty: its serving defaults.
        mode: Decoder LLMs only: what a call is (:data:`autoprune.measure.decoder_latency.DECODER_MODES`):
            ``prefill`` (one pass over a prompt, time to first token) or ``decode`` (greedy tokens from a KV cache).
        prompt_tokens: Decoder LLMs only: tokens of the timed prompt (batch 1).
        new_tokens: Decoder LLMs only: tokens a ``decode`` call generates.
        table_cache: Reuse latency-table measurements from ``$AUTOPRUNE_CACHE/latency-tables``: per-layer
            timings shared by every model with the same layer specs (eager tables,
            :mod:`autoprune.measure.layer_cache`); on serving runtimes per-architecture fitted tables and the
            timed calibration variants, pooled into the fit of a model made of the same layer specs
            (:mod:`autoprune.measure.variant_cache`). False: measure everything, read and write nothing.
    """

    backend: str = "torch"
    batch_size: int = 1
    threads: int = DEFAULT_THREADS
    warmup: int = 5
    rounds: int = 15
    min_rounds: int = 5
    rel_ci: float | None = 0.03
    backend_options: Mapping[str, object] | None = None
    mode: str = "decode"
    prompt_tokens: int = PROMPT_TOKENS
    new_tokens: int = NEW_TOKENS
    table_cache: bool = True

    def schedule(self) -> PairedSchedule:
        """The paired schedule of one search measurement (the backend fills in how calls interleave).

        Raises:
            ConfigError: a count or ``rel_ci`` out of range, naming the field.
        """
        return PairedSchedule(warmup=self.warmup, rounds=self.rounds, min_rounds=self.min_rounds, rel_ci=self.rel_ci)

    def options(self) -> dict[str, object]:
        """``backend_options`` as keywords for :func:`~autoprune.measure.backends.get_backend` (empty when None): how the artifact is served."""
        return dict(self.backend_options or {})

    def ratio_options(self) -> dict[str, object]:
        """The backend options every paired ratio is measured with: the backend's ratio protocol over :meth:`options`.

        (:meth:`LatencyBackend.ratio_options <autoprune.measure.backends.LatencyBackend.ratio_options>`:
        on ONNX Runtime the shared thread pool, on which two sessions timed in turn do not fight;
        ``experiments/results/runtimes.md``, "Timing protocols".) The serving :meth:`options` give the
        deployed artifact's absolute milliseconds in a fresh process.
        """
        return backend_class(self.backend).ratio_options(self.options())

    def serving_check(self) -> ExportCheck | None:
        """The safety net's export check for this backend (:func:`autoprune.graph.safety.verified_graph`).

        The check prepares a pruned model on the serving runtime (:meth:`LatencyBackend.prepare
        <autoprune.measure.backends.LatencyBackend.prepare>`: for an ONNX runtime the export, the
        session and one inference compared with PyTorch's) and runs one inference; it raises when
        the runtime cannot serve the model. Its ``label`` (the backend and its options) keys the
        cached verdicts; its ``runtime`` (``"onnxruntime (latency.backend)"``) is what a failure names.

        Returns:
            The check, or None on an eager backend (PyTorch runs what the safety net's forward
            check already ran).

        Raises:
            ConfigError: an unknown backend, a bad option, or its extra not installed.
        """
        if backend_class(self.backend).eager:
            return None
        backend = get_backend(self.backend, threads=self.threads, **self.ratio_options())  # this process times with it later

        def check(model: nn.Module, example_input: ExampleInput) -> None:
            backend.prepare(model, example_input)()

        check.label = settings_label({"backend": backend.name, **self.options()})  # type: ignore[attr-defined]
        check.runtime = f"{backend.name} (latency.backend)"  # type: ignore[attr-defined]
        return check


__all__ = ["LatencySettings"]
