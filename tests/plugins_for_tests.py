"""Tiny plug-ins named as ``"plugins_for_tests:Class"`` in configs by the tests.

Each is real (a working backend, searcher and importance criterion) and leaves a trace the
tests can check, so a test can tell that the config's reference was the one used.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch_pruning as tp

from autoprune.graph.policy import Policy
from autoprune.measure.backends import LatencyBackend, TorchEagerBackend
from autoprune.measure.onnxruntime import OnnxRuntimeBackend
from autoprune.objective.evaluator import PolicyEvaluator
from autoprune.search.base import Searcher


class CountingEagerBackend(TorchEagerBackend):
    """PyTorch eager, counting the models it prepared (class-wide)."""

    name = "counting-eager"
    prepared = 0

    def prepare(self, model, example_input):
        type(self).prepared += 1
        return super().prepare(model, example_input)


class CountingOnnxRuntimeBackend(OnnxRuntimeBackend):
    """ONNX Runtime under another name, counting the ONNX files it opened (class-wide): a serving, non-eager plug-in."""

    name = "counting-onnxruntime"
    prepared = 0

    def prepare_file(self, path, example_input):
        type(self).prepared += 1
        return super().prepare_file(path, example_input)


def simulated_cost_ms(model: torch.nn.Module) -> float:
    """The true latency :class:`NoisyCostBackend` simulates: 1 ms per 10,000 conv/linear weights, plus 0.1 ms."""
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    return 0.1 + weights / 10_000


class NoisyCostBackend(LatencyBackend):
    """A simulated runtime: a call takes :func:`simulated_cost_ms` on the backend's own clock, times seeded log-normal noise.

    Nothing is computed and no real time is read, so a ratio it yields is an exact function of the
    model's true cost and of ``seed``: the same on any machine, under any load.

    Args:
        threads: Recorded only.
        noise: The log-sd of each call's cost.
        seed: Seeds the noise (one generator per backend, drawn in call order).
    """

    name = "noisy-cost"

    def __init__(self, threads: int | None = None, noise: float = 0.1, seed: int = 0) -> None:
        self.threads, self.noise, self.seed = threads or 1, float(noise), int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.now_ns = 0

    def settings(self):
        return {"backend": self.name, "noise": self.noise, "seed": self.seed}

    def clock(self):
        return lambda: self.now_ns

    def prepare(self, model, example_input):
        ms = simulated_cost_ms(model)

        def run() -> None:
            self.now_ns += round(ms * float(np.exp(self.noise * self.rng.standard_normal())) * 1e6)

        return run


class HalfEverywhereSearcher(Searcher):
    """Evaluates one policy per episode: every unit at ratio ``ratio``."""

    name = "half-everywhere"
    defaults = {"ratio": 0.5}
    seeded = False  # a fixed policy, like a baseline: the search returns it

    def _run(self, evaluator, n_episodes, seed):
        for _ in range(n_episodes):
            self.evaluate(Policy.uniform(evaluator.unit_names, self.params["ratio"]))
        return {"ratio": self.params["ratio"]}


class GridSearcher(Searcher):
    """Evaluates every unit at one ratio, for ``n_episodes`` ratios evenly from ``low`` to ``high``."""

    name = "grid"
    defaults = {"low": 0.0, "high": 0.5}

    def _run(self, evaluator, n_episodes, seed):
        for r in np.linspace(self.params["low"], self.params["high"], n_episodes):
            self.evaluate(Policy.uniform(evaluator.unit_names, float(r)))
        return {}


class LastChannelsFirstImportance(tp.importance.Importance):
    """Scores channel ``i`` of a group by ``-i``: surgery removes the last channels, keeps the first."""

    def __call__(self, group):
        dep, idxs = group[0]
        return -torch.arange(len(idxs), dtype=torch.float32)


class GatedImportance(tp.importance.MagnitudeImportance):
    """L1 magnitude; while ``$AUTOPRUNE_TEST_GATE`` names a folder that holds no ``open`` file, the
    evaluation of a policy waits in its channel ranking, after writing its PID to ``<folder>/waiting``.

    So a test can act on a real ``autoprune run`` while a search trial is running (a second run on
    its folder, SIGTERM), then let it go on by creating ``open``.
    """

    def __init__(self) -> None:
        super().__init__(p=1)

    def __call__(self, group, **kwargs):
        gate = os.environ.get("AUTOPRUNE_TEST_GATE")
        if gate and _in_policy_evaluation():
            folder = Path(gate)
            (folder / "waiting").write_text(str(os.getpid()))
            while not (folder / "open").exists():
                time.sleep(0.02)
        return super().__call__(group, **kwargs)


def _in_policy_evaluation() -> bool:
    frame = sys._getframe()
    while frame is not None:
        if frame.f_code is PolicyEvaluator.evaluate.__code__:
            return True
        frame = frame.f_back
    return False


class FusedQKVAttention(torch.nn.Module):
    """Self-attention with one fused ``qkv`` projection of a private layout: its heads cannot be split."""

    def __init__(self, dim: int = 16, num_heads: int = 4) -> None:
        super().__init__()
        self.num_heads, self.dim = num_heads, dim
        self.qkv, self.proj = torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, _ = x.shape
        q, k, v = self.qkv(x).view(n, length, 3, self.num_heads, self.dim // self.num_heads).permute(2, 0, 3, 1, 4)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, length, self.dim))


class FusedAttentionDigitsNet(torch.nn.Module):
    """An 8x8 digit read as 8 tokens of 8 pixels, one fused-QKV attention layer, a classifier."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, input_size: int = 8) -> None:
        super().__init__()
        self.embed, self.attn, self.fc = torch.nn.Linear(input_size, 16), FusedQKVAttention(), torch.nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.attn(self.embed(x.flatten(1, 2))).mean(1))


class TaggedEagerBackend(TorchEagerBackend):
    """PyTorch eager with one option of its own (``tag``), recorded in its settings: what changes a latency table's cache key."""

    name = "tagged-eager"

    def __init__(self, threads: int | None = None, tag: str = "a") -> None:
        super().__init__(threads)
        self.tag = tag

    def settings(self) -> dict[str, object]:
        return {**super().settings(), "tag": self.tag}
