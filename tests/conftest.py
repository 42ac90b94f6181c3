"""Shared fixtures: the digits data set, zoo models sized for it, and one small trained model.

Tests run with one intra-op thread: with only two cores and other jobs running, two
OpenMP threads spin against each other and make tiny convolutions ~100x slower.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

pytest_plugins = ["services"]  # PostgreSQL and MLflow server fixtures (tests/services.py)

from collections.abc import Callable  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from autoprune.training.baseline import TrainSettings, train_model  # noqa: E402
from autoprune.zoo import DataBundle, build_model, load_data  # noqa: E402


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
    train_model(model, digits, TrainSettings(epochs=3, batch_size=64, lr=0.05, augment=False), progress=False)
    return model.eval()


# --------------------------------------------------------------- searcher fixtures
from autoprune.measure.settings import LatencySettings  # noqa: E402
from autoprune.objective.budget import Budget  # noqa: E402
from autoprune.objective.evaluator import PolicyEvaluator  # noqa: E402
from autoprune.objective.proxy import ProxySettings  # noqa: E402

#: A MAC budget makes feasibility exact (measured latency is noisy on shared machines).
SEARCH_BUDGET = Budget(metric="macs", target=0.6)
SEARCH_SETTINGS = dict(proxy=ProxySettings(bn_batches=2, val_samples=200), latency=LatencySettings(rounds=5, min_rounds=3, threads=1))


@pytest.fixture(scope="session")
def resnet_evaluator(trained_resnet20, digits) -> PolicyEvaluator:
    """An evaluator over the trained digits ResNet-20 (has droppable blocks)."""
    return PolicyEvaluator(trained_resnet20, digits, budget=SEARCH_BUDGET, **SEARCH_SETTINGS)


@pytest.fixture(scope="session")
def mlp_evaluator(digits, make_model) -> PolicyEvaluator:
    """An evaluator over a small trained MLP (no blocks): the fastest objective."""
    model = make_model("mlp")
    train_model(model, digits, TrainSettings(epochs=2, batch_size=64, lr=0.05, augment=False), progress=False)
    return PolicyEvaluator(model.eval(), digits, budget=SEARCH_BUDGET, **SEARCH_SETTINGS)


@pytest.fixture
def evaluator(resnet_evaluator) -> PolicyEvaluator:
    """A fresh history and cache on the shared ResNet-20 evaluator."""
    return resnet_evaluator.with_budget(SEARCH_BUDGET)
