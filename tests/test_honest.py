"""Honest baselines and deliveries, and searches that survive failing candidates."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import fast_settings, fast_train, search
from torch import nn

from autoprune.app.experiment import Baseline
from autoprune.app.pipeline import apply_best
from autoprune.config.loading import parse_config
from autoprune.config.settings import proxy_settings
from autoprune.errors import ModelError
from autoprune.graph.policy import Policy
from autoprune.graph.prunable import PrunableGraph
from autoprune.graph.surgery import apply_policy
from autoprune.objective.budget import Budget
from autoprune.objective.evaluator import PolicyEvaluator, check_baseline_accuracy
from autoprune.objective.proxy import accuracy, proxy_accuracy
from autoprune.training.baseline import default_checkpoint_path, train_or_load


class PickyWidth(nn.Module):
    """A user's model whose forward asserts a channel count its author assumed (multiple of ``multiple``)."""

    def __init__(self, multiple: int) -> None:
        super().__init__()
        self.multiple = multiple
        self.c1 = nn.Conv2d(1, 16, 3, 1, 1)
        self.c2 = nn.Conv2d(16, 16, 3, 1, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        h = F.relu(self.c1(x))
        assert h.shape[1] % self.multiple == 0, f"expected a multiple of {self.multiple} channels, got {h.shape[1]}"
        return self.fc(F.relu(self.c2(h)).mean((2, 3)))


def test_failing_candidates_are_recorded_and_the_search_goes_on(digits, tmp_path):
    torch.manual_seed(0)
    ev = PolicyEvaluator(PickyWidth(8).eval(), digits, budget=Budget(metric="macs", target=1.0), check=False, **fast_settings())
    assert ev.latency_model.calibration_failures and all("AssertionError" in f for f in ev.latency_model.calibration_failures)
    bad = ev.evaluate(Policy({"c1": 0.3}))
    assert bad.failed and bad.error.startswith("AssertionError: expected a multiple of 8")
    search("random", ev, 6)
    assert len(ev.history) == 7 and any(e.metrics.failed for e in ev.history)


def test_the_check_leaves_a_unit_dense_when_the_model_forbids_cutting_it(digits, tmp_path):
    torch.manual_seed(0)
    ev = PolicyEvaluator(PickyWidth(8).eval(), digits, budget=Budget(metric="macs", target=1.0), check_cache=str(tmp_path), **fast_settings())
    assert "c1" not in ev.unit_names and "AssertionError" in ev.graph.skipped["c1"]
    assert ev.latency_model.calibration_failures == []


def test_when_no_candidate_can_be_built_the_run_ends_with_one_error(digits):
    torch.manual_seed(0)
    with pytest.raises(ModelError, match=r"^no pruned candidate of the model can be built: every calibration variant failed \(first: AssertionError"):
        PolicyEvaluator(PickyWidth(16).eval(), digits, budget=Budget(metric="macs", target=1.0), check=False, allow_drop=False, **fast_settings())


def test_a_diverged_baseline_is_refused_and_not_cached(digits, tmp_path):
    path = default_checkpoint_path("mlp", digits.name, tmp_path)
    with pytest.raises(ModelError, match=r"baseline training diverged .*lower train.lr \(now 1000000.0\)"):
        train_or_load("mlp", digits, fast_train(epochs=1, lr=1e6), checkpoint=path, progress=False)
    assert not path.exists()


@pytest.mark.parametrize("acc", [float("nan"), float("inf"), 0.1, 0.2])
def test_a_baseline_at_chance_is_refused_by_name(acc):
    labels = torch.tensor([0, 0, 1, 2, 3, 4, 5, 6, 7, 8])  # the most frequent class is 20%
    with pytest.raises(ModelError, match=r"baseline 'mlp': validation accuracy .* is at chance \(0.200, always the most frequent class\)"):
        check_baseline_accuracy(acc, labels, "mlp")
    check_baseline_accuracy(0.21, labels, "mlp")


def test_an_evaluator_for_a_named_baseline_refuses_one_at_chance(digits):
    untrained = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    nn.init.zeros_(untrained[3].weight), nn.init.zeros_(untrained[3].bias)  # constant output: one class always
    with pytest.raises(ModelError, match=r"^baseline 'mine': validation accuracy"):
        PolicyEvaluator(untrained.eval(), digits, budget=Budget(metric="macs", target=0.6), baseline_name="mine", check=False, **fast_settings())


def test_a_cached_baseline_is_retrained_when_the_training_settings_change(digits, tmp_path):
    path = default_checkpoint_path("mlp", digits.name, tmp_path)
    first = fast_train(epochs=1)
    _, meta1 = train_or_load("mlp", digits, first, checkpoint=path, progress=False, settings_must_match=True)
    _, again = train_or_load("mlp", digits, first, checkpoint=path, progress=False, settings_must_match=True)
    assert again["train_seconds"] == meta1["train_seconds"]  # same settings: loaded
    second = fast_train(epochs=2)
    _, meta2 = train_or_load("mlp", digits, second, checkpoint=path, progress=False, settings_must_match=True)
    assert meta2["settings"]["epochs"] == 2
    # settings the user did not choose (e.g. `apply` of a searched policy): the cached baseline is used
    _, meta3 = train_or_load("mlp", digits, first, checkpoint=path, progress=False)
    assert meta3["settings"]["epochs"] == 2


def test_the_config_decides_whether_training_settings_must_match():
    from autoprune.config.loading import parse_config as parse

    assert "train" in parse({"model": {"name": "mlp"}, "data": {"name": "digits"}, "train": {"lr": 0.05}}, source="t").model_fields_set
    assert "train" not in parse({"model": {"name": "mlp"}, "data": {"name": "digits"}}, source="t").model_fields_set


def test_the_delivered_model_reproduces_the_proxy_accuracy_without_fine_tuning(trained_resnet20, digits):
    cfg = parse_config({"model": {"name": "resnet20"}, "data": {"name": "digits"}, "proxy": {"bn_batches": 2, "val_samples": 200}}, source="test")
    graph = PrunableGraph(trained_resnet20, digits.example_input(1))
    policy = Policy.uniform(graph.unit_names, 0.5)
    proxy = proxy_accuracy(apply_policy(trained_resnet20, policy, graph=graph), digits, proxy_settings(cfg), seed=cfg.seed)
    delivered = apply_best(cfg, Baseline(trained_resnet20, digits, {}, None), policy, graph=graph)
    assert accuracy(delivered, digits.val.subset(200)) == proxy


def test_a_data_driven_criterion_ranks_channels_the_same_with_or_without_the_searchs_evaluator(trained_resnet20, digits):
    from autoprune.config.settings import evaluator_options

    cfg = parse_config({"model": {"name": "resnet20"}, "data": {"name": "digits"}, "pruning": {"importance": "taylor"},
                        "budget": {"metric": "macs", "target": 0.6}, "proxy": {"bn_batches": 2, "val_samples": 200}}, source="test")
    baseline = Baseline(trained_resnet20, digits, {}, None)
    ev = PolicyEvaluator(trained_resnet20, digits, **evaluator_options(cfg))
    policy = Policy.uniform(ev.unit_names, 0.5)
    with_ev = apply_best(cfg, baseline, policy, evaluator=ev)
    alone = apply_best(cfg, baseline, policy)  # calibration batches drawn from the config's proxy, same seed
    for a, b in zip(with_ev.state_dict().values(), alone.state_dict().values()):
        assert torch.equal(a, b)
