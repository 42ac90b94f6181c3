"""The importance-criterion contract: what every registered criterion (and a ``module:Class`` one) must do.

On three models that cover the unit kinds (the digits MLP's linear neurons, ResNet-20's
convolution channels behind BatchNorm and residual adds, a token encoder's attention heads and
FFN neurons), a criterion's scores are:

* one finite float per channel of each unit's dependency group, for every unit;
* deterministic: the same model and calibration batches give the same scores;
* honest about data: a criterion that says it needs gradients or activations refuses to score
  without calibration batches, and one that does not gives the same scores with or without them;
* usable: surgery ranked by them keeps a model that runs, with fewer channels.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from helpers.models import CLASSES, token_model, x_tokens

from autoprune.errors import PolicyError
from autoprune.graph import Policy, PrunableGraph, apply_policy
from autoprune.graph.importance import IMPORTANCES, make_importance, needs_data
from autoprune.graph.scoring import unit_scores
from autoprune.graph.transformer import split_attention_heads
from autoprune.graph.units import UnitKind

#: Every registered criterion, and the test plug-in named by reference.
NAMES = [*IMPORTANCES.names(), "plugins_for_tests:LastChannelsFirstImportance"]
MODELS = ["mlp", "resnet20", "tokens"]


class Case:
    """A graph, an input it runs on and calibration batches ``(inputs, labels)``."""

    def __init__(self, graph: PrunableGraph, x: torch.Tensor, batches: Callable[[], list]) -> None:
        self.graph, self.x, self.batches = graph, x, batches


@pytest.fixture(scope="module")
def cases(graphs, digits) -> dict[str, Case]:
    digit_batches = list(digits.train.batches(32))[:2]
    model = token_model()
    split_attention_heads(model)
    tokens = x_tokens(8)
    labels = torch.arange(8) % CLASSES
    return {
        "mlp": Case(graphs["mlp"], digits.example_input(4), lambda: digit_batches),
        "resnet20": Case(graphs["resnet20"], digits.example_input(4), lambda: digit_batches),
        "tokens": Case(PrunableGraph(model, x_tokens(2)), tokens, lambda: [(tokens, labels)]),
    }


@pytest.fixture(params=NAMES)
def criterion(request) -> str:
    return request.param


@pytest.fixture(params=MODELS)
def case(request, cases) -> Case:
    return cases[request.param]


def test_the_cases_cover_every_unit_kind(cases):
    kinds = {u.features.kind for c in cases.values() for u in c.graph.units}
    assert {UnitKind.HEADS, UnitKind.FFN} <= kinds and len(kinds) >= 4, kinds


def test_one_finite_score_per_channel_of_every_unit(criterion, case):
    scores = unit_scores(case.graph, criterion, case.batches)
    assert set(scores) == set(case.graph.unit_names)
    for u in case.graph.units:
        s = scores[u.name]
        assert len(case.graph.dependency_group(u.name)[0].idxs) == u.features.channels  # the group's root channels
        assert s.dtype == torch.float32 and s.shape == (u.features.channels,), (u.name, s.shape)
        assert torch.isfinite(s).all(), (u.name, s)


def test_the_same_model_and_batches_give_the_same_scores(criterion, case):
    first = unit_scores(case.graph, criterion, case.batches)
    again = unit_scores(case.graph, criterion, case.batches)
    assert all(torch.equal(first[n], again[n]) for n in first)


def test_a_criterion_that_needs_data_says_so_and_one_that_does_not_ignores_it(criterion, case):
    if needs_data(make_importance(criterion)):
        with pytest.raises(PolicyError, match=rf"^importance {criterion!r} needs (training|calibration) batches"):
            unit_scores(case.graph, criterion)
    else:
        without, with_data = unit_scores(case.graph, criterion), unit_scores(case.graph, criterion, case.batches)
        assert all(torch.equal(without[n], with_data[n]) for n in without)


def test_surgery_ranked_by_it_keeps_a_model_that_runs_with_fewer_channels(criterion, case):
    graph = case.graph
    pruned = apply_policy(graph.model, Policy.uniform(graph.unit_names, 0.5), graph=graph, importance=criterion, batches=case.batches)
    with torch.inference_mode():
        dense_out, out = graph.model(case.x), pruned(case.x)
    assert out.shape == dense_out.shape and torch.isfinite(out).all()
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in graph.model.parameters())
