"""Accuracy: the adaptive-BN proxy used in search, and full evaluation."""

import copy
import math

import pytest
import torch
from torch import nn

from autoprune.graph.policy import Policy
from autoprune.graph.prunable import PrunableGraph
from autoprune.graph.surgery import apply_policy
from autoprune.objective.proxy import ProxySettings, accuracy, proxy_accuracy, recalibrate_bn, split_metrics

NO_RECALIBRATION = ProxySettings(bn_batches=0)


@pytest.fixture(scope="module")
def half_pruned(trained_resnet20, example_input):
    """The trained digits resnet20 with every unit pruned by 50% (BN statistics still the dense ones)."""
    g = PrunableGraph(trained_resnet20, example_input)
    return apply_policy(trained_resnet20, Policy.uniform(g.unit_names, 0.5), graph=g)


def test_dense_trained_model_has_high_proxy_accuracy(trained_resnet20, digits):
    assert proxy_accuracy(copy.deepcopy(trained_resnet20), digits) > 0.8
    assert accuracy(trained_resnet20, digits.val) > 0.8


def test_bn_recalibration_recovers_accuracy_lost_to_pruning(half_pruned, digits):
    raw = proxy_accuracy(copy.deepcopy(half_pruned), digits, NO_RECALIBRATION)
    recalibrated = proxy_accuracy(copy.deepcopy(half_pruned), digits)
    # stale BN statistics leave the pruned net near chance; re-estimating them brings much of it back
    assert recalibrated >= raw + 0.2
    assert raw == accuracy(half_pruned, digits.val)


def test_proxy_accuracy_is_reproducible_for_a_seed(half_pruned, digits):
    a = proxy_accuracy(copy.deepcopy(half_pruned), digits, seed=3)
    b = proxy_accuracy(copy.deepcopy(half_pruned), digits, seed=3)
    assert a == b


def test_proxy_scores_only_val_samples_of_the_validation_split(trained_resnet20, digits):
    few = ProxySettings(bn_batches=0, val_samples=50)
    expected = accuracy(trained_resnet20, digits.val.subset(50))
    assert proxy_accuracy(copy.deepcopy(trained_resnet20), digits, few) == expected


def test_recalibration_changes_bn_statistics_but_not_weights(half_pruned, digits):
    model = copy.deepcopy(half_pruned)
    bn = model.layer2[1].bn1
    weights_before = {k: v.clone() for k, v in model.named_parameters()}
    mean_before = bn.running_mean.clone()

    recalibrate_bn(model, digits.train, batches=4, batch_size=64)

    assert not torch.allclose(bn.running_mean, mean_before)
    assert bn.num_batches_tracked == 4
    assert bn.momentum == 0.1  # the training momentum is restored afterwards
    assert not model.training
    assert all(torch.equal(v, weights_before[k]) for k, v in model.named_parameters())


def test_recalibration_estimates_the_mean_over_the_calibration_batches(digits):
    model = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(64))
    recalibrate_bn(model, digits.train, batches=3, batch_size=100)
    # shuffled with seed 0, as recalibrate_bn does: three batches of 100 samples
    x = torch.cat([x for _, (x, _) in zip(range(3), digits.train.batches(100, shuffle=True, seed=0))])
    assert torch.allclose(model[1].running_mean, x.flatten(1).mean(0), atol=1e-5)


def test_split_metrics_report_accuracy_and_mean_cross_entropy(trained_resnet20, digits):
    result = split_metrics(trained_resnet20, digits.test, batch_size=100)
    assert set(result) == {"accuracy", "loss"}
    assert 0.8 < result["accuracy"] <= 1.0
    assert result["accuracy"] == accuracy(trained_resnet20, digits.test)
    assert 0.0 < result["loss"] < math.log(10)  # better than a uniform guess
    with torch.no_grad():
        expected_loss = nn.functional.cross_entropy(trained_resnet20(digits.test.x), digits.test.y)
    assert result["loss"] == pytest.approx(float(expected_loss), rel=1e-4)


def test_untrained_model_scores_near_chance(make_model, digits):
    result = split_metrics(make_model("vgg_small"), digits.val)
    assert 0.0 <= result["accuracy"] < 0.4
    assert result["loss"] > 1.5


def test_evaluation_restores_training_mode(make_model, digits):
    model = make_model("mlp").train()
    split_metrics(model, digits.val)
    accuracy(model, digits.val)
    assert model.training
