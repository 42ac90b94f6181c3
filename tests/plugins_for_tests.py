"""Tiny plug-ins named as ``"plugins_for_tests:Class"`` in configs by ``tests/test_settings.py``.

Each is real (a working backend, searcher and importance criterion) and leaves a trace the
tests can check, so a test can tell that the config's reference was the one used.
"""

from __future__ import annotations

import torch
import torch_pruning as tp

from autoprune.graph.policy import Policy
from autoprune.measure.latency import TorchEagerBackend
from autoprune.search.base import Searcher


class CountingEagerBackend(TorchEagerBackend):
    """PyTorch eager, counting the models it prepared (class-wide)."""

    name = "counting-eager"
    prepared = 0

    def prepare(self, model, example_input):  # noqa: ANN001, ANN201
        type(self).prepared += 1
        return super().prepare(model, example_input)


class HalfEverywhereSearcher(Searcher):
    """Evaluates one policy per episode: every unit at ratio ``ratio``."""

    name = "half-everywhere"
    defaults = {"ratio": 0.5}

    def _run(self, evaluator, n_episodes, seed):  # noqa: ANN001, ANN202
        for _ in range(n_episodes):
            self.evaluate(Policy.uniform(evaluator.unit_names, self.params["ratio"]))
        return {"ratio": self.params["ratio"]}


class LastChannelsFirstImportance(tp.importance.Importance):
    """Scores channel ``i`` of a group by ``-i``: surgery removes the last channels, keeps the first."""

    def __call__(self, group):  # noqa: ANN001, ANN204
        dep, idxs = group[0]
        return -torch.arange(len(idxs), dtype=torch.float32)
