"""Shared fixtures: the digits data set, zoo models sized for it, small trained models, their graphs and evaluators.

Plain helpers (the tiny experiment config, fast settings, ``search()``, the in-process CLI
runner) live in ``tests/helpers/``.

Tests run with one intra-op thread: with only two cores and other jobs running, two
OpenMP threads spin against each other and make tiny convolutions ~100x slower.
"""

import logging
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

pytest_plugins = ["services"]  # PostgreSQL and MLflow server fixtures (tests/services.py)

from collections.abc import Callable  # noqa: E402

import pytest  # noqa: E402

pytest.register_assert_rewrite("helpers")  # their asserts explain failures like a test's own

import torch  # noqa: E402
from torch import nn  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from helpers import FAST_TRAIN, fast_settings, fast_train  # noqa: E402

from autoprune.graph.prunable import PrunableGraph  # noqa: E402
from autoprune.training.baseline import train_model  # noqa: E402
from autoprune.zoo import MODEL_NAMES, DataBundle, build_model, load_data  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory):
    """``$AUTOPRUNE_CACHE`` is a fresh folder for the session (real processes the tests start inherit it).

    Without it, baselines and graph-check verdicts went to ``.autoprune/`` of the working
    directory and were read back by later runs: a test could pass on a verdict an earlier
    version of the code had cached, and behave differently on a clean clone. Tests that need a
    cache of their own still set the variable themselves.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTOPRUNE_CACHE", str(tmp_path_factory.mktemp("autoprune-cache")))
        yield


@pytest.fixture(autouse=True)
def _restore_process_state():
    """``autoprune`` commands run in-process reconfigure the root logger (rich handler) and torch's threads; undo it after each test."""
    root = logging.getLogger()
    handlers, level, threads = root.handlers[:], root.level, torch.get_num_threads()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    torch.set_num_threads(threads)  # commands may set latency.threads


@pytest.fixture(scope="session")
def digits() -> DataBundle:
    """scikit-learn digits, 1x8x8, split with the default seed."""
    return load_data("digits")


@pytest.fixture(scope="session")
def example_input(digits: DataBundle) -> torch.Tensor:
    """Two digits images: enough to trace a model, cheap to run."""
    return digits.example_input(2)


@pytest.fixture(scope="session")
def make_model(digits: DataBundle) -> Callable[[str], nn.Module]:
    """Build a zoo model for digits (1 channel, 10 classes, 8x8), with seeded weights."""

    def make(name: str, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        model = build_model(name, in_channels=digits.in_channels, num_classes=digits.num_classes, input_size=digits.input_size)
        return model.eval()

    return make


@pytest.fixture(scope="session")
def trained_resnet20(digits: DataBundle, make_model: Callable[[str], nn.Module]) -> nn.Module:
    """resnet20 trained for 3 epochs on digits (~97% val accuracy, a few seconds).

    Session-scoped: tests must not modify it (prune a copy, or deep-copy it first).
    """
    model = make_model("resnet20")
    train_model(model, digits, fast_train(epochs=3), progress=False)
    return model.eval()


class _Graphs(dict):
    """``graphs[name]``: the graph of ``make_model(name)``, built on first use."""

    def __init__(self, make_model: Callable[[str], nn.Module], example_input: torch.Tensor) -> None:
        super().__init__()
        self._make, self._example = make_model, example_input

    def __missing__(self, name: str) -> PrunableGraph:
        if name not in MODEL_NAMES:
            raise KeyError(name)
        graph = self[name] = PrunableGraph(self._make(name), self._example)
        return graph


@pytest.fixture(scope="session")
def graphs(make_model: Callable[[str], nn.Module], example_input: torch.Tensor) -> dict[str, PrunableGraph]:
    """``graphs[name]``: one dense zoo model (seeded weights, untrained) and its graph per zoo name.

    Read-only: tests prune copies (``apply_policy`` leaves the model alone) and never exclude units.
    """
    return _Graphs(make_model, example_input)


# --------------------------------------------------------------- searcher fixtures
from autoprune.objective.budget import Budget  # noqa: E402
from autoprune.objective.evaluator import PolicyEvaluator  # noqa: E402

#: A MAC budget makes feasibility exact (measured latency is noisy on shared machines).
SEARCH_BUDGET = Budget(metric="macs", target=0.6)


@pytest.fixture(scope="session")
def resnet_evaluator(trained_resnet20, digits) -> PolicyEvaluator:
    """An evaluator over the trained digits ResNet-20 (has droppable blocks)."""
    return PolicyEvaluator(trained_resnet20, digits, budget=SEARCH_BUDGET, **fast_settings())


@pytest.fixture(scope="session")
def trained_mlp(digits: DataBundle, make_model: Callable[[str], nn.Module]) -> nn.Module:
    """The digits MLP trained with ``FAST_TRAIN`` (two units, no blocks; about a second). Read-only, like ``trained_resnet20``."""
    model = make_model("mlp")
    train_model(model, digits, FAST_TRAIN, progress=False)
    return model.eval()


@pytest.fixture(scope="session")
def mlp_evaluator(trained_mlp, digits) -> PolicyEvaluator:
    """An evaluator over the trained MLP (no blocks): the fastest objective."""
    return PolicyEvaluator(trained_mlp, digits, budget=SEARCH_BUDGET, **fast_settings())


@pytest.fixture
def evaluator(resnet_evaluator) -> PolicyEvaluator:
    """A fresh history and cache on the shared ResNet-20 evaluator."""
    return resnet_evaluator.with_budget(SEARCH_BUDGET)


@pytest.fixture
def fresh_mlp_evaluator(mlp_evaluator) -> PolicyEvaluator:
    """A fresh history and cache on the shared MLP evaluator (searches on it leave the shared one alone)."""
    return mlp_evaluator.with_budget(SEARCH_BUDGET)
