"""Tiny plug-ins named as ``"plugins_for_tests:Class"`` in configs by the tests.

Each is real (a working backend, searcher and importance criterion) and leaves a trace the
tests can check, so a test can tell that the config's reference was the one used.
"""

from __future__ import annotations

import torch
import torch_pruning as tp

from autoprune.graph.policy import Policy
from autoprune.measure.backends import TorchEagerBackend
from autoprune.measure.onnxruntime import OnnxRuntimeBackend
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


class HalfEverywhereSearcher(Searcher):
    """Evaluates one policy per episode: every unit at ratio ``ratio``."""

    name = "half-everywhere"
    defaults = {"ratio": 0.5}
    seeded = False  # a fixed policy, like a baseline: the search returns it

    def _run(self, evaluator, n_episodes, seed):
        for _ in range(n_episodes):
            self.evaluate(Policy.uniform(evaluator.unit_names, self.params["ratio"]))
        return {"ratio": self.params["ratio"]}


class LastChannelsFirstImportance(tp.importance.Importance):
    """Scores channel ``i`` of a group by ``-i``: surgery removes the last channels, keeps the first."""

    def __call__(self, group):
        dep, idxs = group[0]
        return -torch.arange(len(idxs), dtype=torch.float32)


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
