"""The latency model of a decoder search: a prediction from the decoder's shape, updated by paired measurements in one mode.

:class:`DecoderLatencyModel` answers what a :class:`~autoprune.measure.latency_model.LatencyModel`
answers for the evaluator (``predict_ratio``, ``measure``, ``estimate``, ``dense_ms``, ``label``,
``close``), for a decoder LLM timed on eager PyTorch in ``latency.mode``
(:mod:`autoprune.measure.decoder_latency`: ``prefill`` of a prompt, or ``decode`` of new tokens
from a KV cache). A candidate is timed **paired** against the dense model on the same prompt
(:class:`~autoprune.measure.latency.PairedTimer`, one call of each per round: a decode call is
long), and its estimate is the prediction updated by that measurement
(:func:`autoprune.measure.uncertainty.combine`), so the budget is checked on the interval's upper
end exactly as for other models.

The prediction is a linear cost model of the decoder's shape, ``ratio = 1 - w_a (1 - a) - w_m
(1 - m) - w_l (1 - l)``, with ``a``, ``m`` and ``l`` the shares of the dense attention MACs, MLP
MACs and layers a policy keeps (:mod:`autoprune.graph.decoder_search`); the rest, ``1 - w_a - w_m -
w_l``, is what pruning cannot touch (embedding, LM head, per-call overhead). The weights are
fitted to three pruned variants measured paired at build time (every attention unit, every MLP
unit at ``max_ratio``, half the layers dropped) by ridge regression towards the MAC shares
(:func:`fit_weights`); until then, or when a fit fails, they are the MAC shares. Decode on a CPU reads every weight per token, so its
time follows the weights kept plus a large fixed LM head (the scout's measurements, issue 23).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprune.graph.decoder import DecoderScores
from autoprune.graph.decoder_search import DecoderSearchGraph, layer_macs
from autoprune.graph.decoder_surgery import prune_decoder
from autoprune.graph.policy import Policy
from autoprune.measure.backends import LatencyBackend, settings_label
from autoprune.measure.decoder_latency import DecoderMode, check_prompt, decoder_mode
from autoprune.measure.latency import PairedTimer, RatioStats
from autoprune.measure.schedule import PairedSchedule
from autoprune.measure.settings import LatencySettings
from autoprune.measure.uncertainty import LatencyEstimate, ResidualPrior, combine

log = logging.getLogger(__name__)


def _shares(graph: DecoderSearchGraph, policy: Policy) -> np.ndarray:
    """``(1 - a, 1 - m, 1 - l)``: the shares of the dense attention MACs, MLP MACs and layers that ``policy`` removes."""
    h = graph.hidden
    dense = graph.decoder.shapes
    kept = graph.decoder.kept(policy)

    def attn(s: Any) -> int:
        return layer_macs(s, h) - 3 * h * s.mlp

    a = sum(attn(s) for s in kept if s is not None) / max(1, sum(attn(s) for s in dense))
    m = sum(s.mlp for s in kept if s is not None) / max(1, sum(s.mlp for s in dense))
    n = sum(s is not None for s in kept) / len(dense)
    return np.array([1.0 - a, 1.0 - m, 1.0 - n])


def mac_weights(graph: DecoderSearchGraph) -> np.ndarray:
    """The prior weights ``(w_a, w_m, w_l)``: the shares of the dense MACs per token in attention and MLP, 0 for a layer's overhead."""
    h, total = graph.hidden, max(1, graph.dense_macs)
    mlp = sum(3 * h * s.mlp for s in graph.decoder.shapes)
    attn = sum(layer_macs(s, h) for s in graph.decoder.shapes) - mlp
    return np.array([attn / total, mlp / total, 0.0])


#: Weight of the MAC-share prior against each measured variant in :func:`fit_weights` (a ridge penalty towards it).
PRIOR_STRENGTH = 0.5


def fit_weights(x: np.ndarray, y: np.ndarray, prior: np.ndarray, strength: float = PRIOR_STRENGTH) -> np.ndarray:
    """The cost model's weights from measured variants: ridge regression towards ``prior``, then clipped to ``w >= 0, sum(w) <= 1``.

    Minimises ``||x w - y||^2 + strength * ||w - prior||^2`` (Hoerl & Kennard 1970, ridge regression
    shrunk towards a prior mean instead of 0), so three short measurements on a busy machine cannot
    move a weight far from what the MAC shares say unless they agree.

    Args:
        x: ``(n, 3)`` shares each variant removes (:func:`_shares`).
        y: ``(n,)`` the measured ``1 - ratio`` of each variant.
        prior: ``(3,)`` weights before any measurement (:func:`mac_weights`).
        strength: Weight of the prior (0: least squares).

    Returns:
        ``(3,)`` weights.
    """
    if len(x) == 0:
        return prior.copy()
    a = x.T @ x + strength * np.eye(x.shape[1])
    w = np.clip(np.linalg.solve(a, x.T @ y + strength * prior), 0.0, None)
    return w / w.sum() if w.sum() > 1.0 else w


@dataclass
class DecoderLatencyModel:
    """What a decoder search knows about latency: the paired timer in one mode, the dense ms, the fitted cost model.

    Build it with :meth:`build`. Latencies are milliseconds per call (a prefill, or ``new_tokens``
    decode steps); ratios are fractions of the dense model's.

    Attributes:
        settings: The ``latency`` settings (``mode``, ``prompt_tokens``, ``new_tokens``, rounds, threads).
        mode: The :class:`~autoprune.measure.decoder_latency.DecoderMode` timed.
        prompt: The ``(1, prompt_tokens)`` int64 prompt, cut from real text.
        timer: The paired timer, the dense model's runner its reference.
        dense_ms: The dense model's ms per call.
        graph: The decoder's search graph (the shares a policy keeps).
        weights: ``(w_a, w_m, w_l)`` of the cost model (see the module docstring).
        table_info: How the weights were made (``kind``: ``decoder cost model``, ``variants`` measured).
        calibration_failures: One line per calibration variant that failed.
        backend_settings: The timer's settings plus the mode, recorded with every result.
        prior: The prediction's error learned from every candidate measured.
    """

    settings: LatencySettings
    mode: DecoderMode
    prompt: torch.Tensor
    timer: PairedTimer
    dense_ms: float
    graph: DecoderSearchGraph
    weights: np.ndarray
    table_info: dict[str, Any] = field(default_factory=dict)
    calibration_failures: list[str] = field(default_factory=list)
    backend_settings: dict[str, object] = field(default_factory=dict)
    prior: ResidualPrior = field(default_factory=ResidualPrior)

    @classmethod
    def build(cls, model: nn.Module, graph: DecoderSearchGraph, settings: LatencySettings, *, prompt: torch.Tensor, max_ratio: float,
              unit_names: Sequence[str], block_names: Sequence[str], scores: DecoderScores | None = None) -> DecoderLatencyModel:
        """Time the dense decoder in ``settings.mode`` and fit the cost model on three pruned variants, each measured paired.

        Args:
            model: The dense decoder (eval mode; never modified).
            graph: Its :class:`~autoprune.graph.decoder_search.DecoderSearchGraph`.
            settings: ``mode``, ``new_tokens``, ``threads``, ``warmup``, ``min_rounds``.
            prompt: ``(1, L)`` int64 token ids of real text.
            max_ratio: The search's largest ratio (the calibration variants use it).
            unit_names, block_names: Units and droppable layers offered to the search.
            scores: Importance used to choose what the variants cut (None: the lowest indices).

        Raises:
            ConfigError: an unknown mode, bad counts, or a prompt that with the new tokens exceeds the model's context.
        """
        mode = decoder_mode(settings.mode, new_tokens=settings.new_tokens)
        check_prompt(prompt, model, mode)
        settings.schedule()
        timer = PairedTimer(mode.runner(model, prompt), prompt, threads=settings.threads)
        dense_ms = timer.reference_ms(repeats=max(3, settings.min_rounds))
        found = cls(settings, mode, prompt, timer, dense_ms, graph, mac_weights(graph), {"kind": "decoder cost model (MAC shares)", "variants": 0},
                    backend_settings={**timer.settings(), "mode": mode.name, "prompt_tokens": int(prompt.shape[1]),
                                      **({"new_tokens": mode.new_tokens} if mode.tokens_per_call else {})})
        found._fit(lambda p: prune_decoder(model, graph.plan(p, scores)), max_ratio, list(unit_names), list(block_names))
        return found

    def _fit(self, prune: Callable[[Policy], nn.Module], max_ratio: float, units: list[str], blocks: list[str]) -> None:
        roles = {u.name: u.features.kind for u in self.graph.units}
        attn = [u for u in units if roles[u] == "heads"]
        mlp = [u for u in units if roles[u] == "ffn"]
        variants = [Policy.uniform(attn, max_ratio), Policy.uniform(mlp, max_ratio), Policy({}, tuple(blocks[1::2]))]
        rows, targets = [], []
        schedule = PairedSchedule(warmup=min(1, self.settings.warmup), rounds=max(3, self.settings.min_rounds), calls_per_round=1)
        for policy in variants:
            if not policy.ratios and not policy.drop:
                continue
            try:
                stats = self.timer.ratio(self.mode.runner(prune(policy).eval(), self.prompt), schedule)
            except (RuntimeError, ValueError) as e:
                self.calibration_failures.append(f"{type(e).__name__}: {' '.join(str(e).split())[:200]}")
                continue
            rows.append(_shares(self.graph, policy))
            targets.append(1.0 - stats.ratio)
        if not rows:
            return
        w = fit_weights(np.array(rows), np.array(targets), self.weights)
        if np.all(np.isfinite(w)) and w.sum() > 0:
            self.weights = w
            self.table_info = {"kind": "decoder cost model (fitted)", "variants": len(rows)}
        log.info("decoder latency model (%s): attention %.3f, MLP %.3f, layers %.3f, fixed %.3f of dense", self.mode.name, *self.weights,
                 1.0 - float(self.weights.sum()))

    @property
    def backend(self) -> LatencyBackend:
        """The backend that times (eager PyTorch)."""
        return self.timer.backend

    @property
    def label(self) -> str:
        """One line naming the backend, its settings and the mode."""
        return settings_label(self.backend_settings)

    def predict_ratio(self, ratios: dict[str, float], drop: Sequence[str] = ()) -> float:
        """Latency ratio to dense the cost model predicts for a policy, without surgery.

        Raises:
            PolicyError: a ratio outside ``[0, 1]``, an unknown unit or layer, or a policy that removes every KV group or layer.
        """
        return max(1e-3, 1.0 - float(self.weights @ _shares(self.graph, Policy(dict(ratios), tuple(drop)))))

    def _schedule(self, schedule: PairedSchedule | None) -> PairedSchedule:
        return dataclasses.replace(self.settings.schedule() if schedule is None else schedule, calls_per_round=1)

    def measure(self, candidate: nn.Module, schedule: PairedSchedule | None = None) -> RatioStats:
        """Latency of a pruned decoder relative to dense in the mode, by paired measurement (one call of each per round).

        Args:
            candidate: The pruned decoder.
            schedule: The schedule (None: the settings' search schedule).
        """
        return self.timer.ratio(self.mode.runner(candidate, self.prompt), self._schedule(schedule))

    def estimate(self, candidate: nn.Module, predicted: float, schedule: PairedSchedule | None = None) -> LatencyEstimate:
        """A candidate's latency ratio with its ~95% interval: the prediction updated by a paired measurement (see :meth:`measure`)."""
        stats = self.measure(candidate, schedule)
        found = combine(predicted, stats, self.prior)
        self.prior.add(predicted, stats.ratio)
        return found

    def tokens_per_s(self, ratio: float) -> float:
        """Decode speed of a model at ``ratio`` of the dense latency (0 in prefill mode)."""
        ms = ratio * self.dense_ms
        return self.mode.tokens_per_call / (ms / 1000.0) if self.mode.tokens_per_call and ms > 0 and math.isfinite(ms) else 0.0

    def close(self) -> None:
        """Release the timer's reference (its KV cache), and collect it."""
        self.timer.close()
        gc.collect()


def compare_decoder_modes(dense: nn.Module, pruned: nn.Module, prompt: torch.Tensor, *, new_tokens: int, threads: int,
                          rounds: int = 10) -> dict[str, tuple[float, LatencyEstimate]]:
    """Time a pruned decoder against the dense one in both modes, paired (one call of each per round, alternating order).

    Args:
        dense, pruned: The decoders (eval mode).
        prompt: ``(1, L)`` int64 prompt of real text.
        new_tokens: Tokens per ``decode`` call.
        threads: Intra-op threads.
        rounds: Paired rounds per mode.

    Returns:
        ``{mode: (dense ms per call, the pruned model's ratio to dense as a LatencyEstimate)}`` for ``prefill`` and ``decode``.

    Raises:
        ConfigError: the prompt with the new tokens exceeds the model's context.
    """
    out = {}
    for name in ("prefill", "decode"):
        mode = decoder_mode(name, new_tokens=new_tokens)
        check_prompt(prompt, dense, mode)
        timer = PairedTimer(mode.runner(dense, prompt), prompt, threads=threads)
        stats = timer.ratio(mode.runner(pruned, prompt), PairedSchedule(warmup=1, rounds=rounds, calls_per_round=1))
        out[name] = (timer.reference_ms(), LatencyEstimate.of_measurement(stats, source="final"))
        timer.close()
    return out


__all__ = ["PRIOR_STRENGTH", "DecoderLatencyModel", "compare_decoder_modes", "fit_weights", "mac_weights"]
