"""The searcher contract: what every registered searcher (and a ``module:Class`` one) must do.

On the digits MLP under a MAC budget (feasibility is exact, so nothing depends on the machine's speed):

* a short search with the parameters the experiment gives it (``experiment_params``) returns a
  best evaluation taken from the evaluator's own history, whose ratios name only the graph's
  units and lie in ``[0, max_ratio]``, and whose dropped blocks are the evaluator's;
* its history is exactly what it added to the evaluator's, at most the episodes asked;
* a searcher that says it is ``deterministic`` proposes the same policies for the same seed;
* what it declares holds (each capability is tested on exactly the searchers that declare it): ``supports_warm_start`` evaluates the enqueued policy first,
  ``supports_workers`` joins a shared search through ``worker_params`` (parameters it accepts,
  an ``on_ready`` keyword; the others have no worker parameters), ``loads_agent`` runs a saved
  agent zero-shot, ``needs_blocks`` refuses a model without droppable blocks (and is searched on
  ResNet-20's blocks here).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
from helpers import search

from autoprune.errors import ConfigError
from autoprune.graph.policy import Policy
from autoprune.objective.evaluator import PolicyEvaluator
from autoprune.search import SEARCHERS, ExperimentContext, get_searcher, searcher_class
from autoprune.search.base import Searcher, SearchResult

#: Every registered searcher, and the test plug-in named by reference.
NAMES = [*SEARCHERS.names(), "plugins_for_tests:HalfEverywhereSearcher"]
#: Enough for every searcher to do something of its own on two units (sensitivity needs 2 levels per unit and one more).
EPISODES = 6


def context(tmp_path: Path, **fields) -> ExperimentContext:
    return ExperimentContext(output_dir=tmp_path / "out", name="contract", **fields)


def run(name: str, evaluator: PolicyEvaluator, tmp_path: Path, episodes: int = EPISODES, *, seed: int = 0, **params) -> SearchResult:
    """A quiet search with the experiment's parameters for this searcher (outputs under ``tmp_path``), ``params`` on top."""
    ctx = context(tmp_path)
    ctx.output_dir.mkdir(parents=True, exist_ok=True)  # the application creates it before searching
    experiment = searcher_class(name).experiment_params(ctx)
    return search(name, evaluator, episodes, seed=seed, **{**experiment, **params})


def declaring(capability: str) -> list[str]:
    """The names in :data:`NAMES` whose class declares ``capability`` true."""
    return [n for n in NAMES if getattr(searcher_class(n), capability)]


@pytest.fixture(params=NAMES)
def name(request) -> str:
    return request.param


@pytest.fixture
def cls(name) -> type[Searcher]:
    return searcher_class(name)


@pytest.fixture
def ev(cls, request) -> PolicyEvaluator:
    """A fresh evaluator it can search: the MLP's, or ResNet-20's (droppable blocks) for a searcher that ``needs_blocks``."""
    return request.getfixturevalue("evaluator" if cls.needs_blocks else "fresh_mlp_evaluator")


def test_the_experiment_parameters_are_ones_it_accepts_and_can_be_recorded(name, cls, tmp_path):
    params = cls.experiment_params(context(tmp_path, sampler="tpe"))
    assert set(params) <= set(cls.defaults)
    json.dumps(params)  # logged to MLflow with the run
    assert get_searcher(name, params, progress=False).params == {**cls.defaults, **params}


def test_a_short_search_returns_a_best_policy_from_the_evaluators_history_within_bounds(name, cls, ev, tmp_path):
    result = run(name, ev, tmp_path)
    assert result.searcher == cls.name
    assert 1 <= result.episodes <= EPISODES
    assert result.history == ev.history  # every evaluation it made went through the evaluator, and nothing else
    assert result.best is not None and any(e is result.best for e in ev.history)
    assert ev.evaluate(result.best.policy) == result.best.metrics  # the figures are the evaluator's (its cache answers)
    policy = result.best.policy
    assert set(policy.ratios) <= set(ev.unit_names)
    assert all(0.0 <= r <= ev.max_ratio for r in policy.ratios.values()), policy.ratios
    assert set(policy.drop) <= set(ev.block_names)
    assert all(e in ev.history for e in result.pareto)


@pytest.mark.parametrize("name", declaring("deterministic"))
def test_a_deterministic_searcher_proposes_the_same_policies_for_the_same_seed(name, ev, tmp_path):
    first = run(name, ev, tmp_path / "first", seed=3)
    again = run(name, ev.with_budget(ev.budget), tmp_path / "again", seed=3)
    assert [e.policy.key() for e in again.history] == [e.policy.key() for e in first.history]
    assert again.best.policy.key() == first.best.policy.key()


@pytest.mark.parametrize("name", declaring("supports_warm_start"))
def test_a_searcher_that_supports_warm_start_evaluates_the_enqueued_policy_first(name, cls, ev, tmp_path):
    assert "enqueue" in cls.defaults
    warm = Policy.uniform(ev.unit_names, 0.25)
    result = run(name, ev, tmp_path, 2, enqueue=[warm.to_dict()])
    assert result.history[0].policy.key() == warm.key()


def test_worker_support_agrees_with_worker_params(name, cls, tmp_path):
    ctx = context(tmp_path, storage=f"sqlite:///{tmp_path / 'shared.db'}", study="shared")
    params = cls.worker_params(ctx, n_trials=2)
    if not cls.supports_workers:
        assert params == {}, "worker_params is only for a searcher that supports workers"
        return
    assert {"storage", "study_name"} <= set(cls.defaults)
    assert set(params) <= set(cls.defaults)
    assert (params["storage"], params["study_name"]) == (ctx.storage, ctx.study)
    accepts = inspect.signature(cls).parameters
    assert "on_ready" in accepts or any(p.kind is p.VAR_KEYWORD for p in accepts.values())
    get_searcher(name, {**cls.experiment_params(ctx), **params}, progress=False, on_ready=lambda handle: None)


@pytest.mark.parametrize("name", declaring("loads_agent"))
def test_a_searcher_that_loads_agents_runs_a_saved_one_zero_shot(name, cls, ev, tmp_path):
    assert {"agent", "zero_shot"} <= set(cls.defaults)
    agent = tmp_path / "agent"
    search(name, ev, 2, save_agent=str(agent))  # the agent searchers save theirs with ``save_agent``
    again = ev.with_budget(ev.budget)
    result = search(name, again, 2, agent=str(agent), zero_shot=True)
    assert result.episodes == 2 and result.history == again.history


@pytest.mark.parametrize("name", declaring("needs_blocks"))
def test_a_searcher_that_needs_blocks_refuses_a_model_without_any_before_the_first_episode(name, cls, fresh_mlp_evaluator, tmp_path):
    assert fresh_mlp_evaluator.block_names == []
    with pytest.raises(ConfigError, match=rf"^search.searcher: {cls.name!r} needs droppable blocks, and this model has none; allowed: "):
        run(name, fresh_mlp_evaluator, tmp_path)
    assert fresh_mlp_evaluator.history == []
