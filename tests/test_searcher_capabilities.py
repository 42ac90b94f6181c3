"""Searchers say what they can do; the application asks them instead of reading their names.

* which built-in searchers declare which capability (that every searcher's capabilities agree with
  the hyper-parameters it declares is its contract, ``tests/contracts/test_searchers.py``);
* the experiment's defaults of a searcher's parameters come from the searcher itself;
* workers, ``--warm-start``, ``--agent`` and ``--restart`` follow the capabilities, for a user's
  searcher as for a built-in one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import optuna
import plugins_for_tests
import pytest

from autoprune.app.commands import agent_searcher, search_command
from autoprune.app.experiment import run_worker, searcher_params, sized_for_workers
from autoprune.config.loading import parse_config
from autoprune.errors import ConfigError
from autoprune.search import AGENT_SEARCHER, SEARCHERS, register_searcher, searcher_class, searchers_that
from autoprune.search.distributed import publish_study
from autoprune.search.optuna_search import OptunaSearcher
from autoprune.search.ppo import PPOSearcher, checkpoint_paths


def experiment(tmp_path: Path, **search) -> dict:
    return {"name": "caps", "output_dir": str(tmp_path / "out"), "model": {"name": "mlp"}, "data": {"name": "digits"}, "search": search}


class WorkerFriendlySearcher(plugins_for_tests.HalfEverywhereSearcher):
    """A user's searcher that claims worker support and takes warm-start policies."""

    name = "worker-friendly"
    defaults = {**plugins_for_tests.HalfEverywhereSearcher.defaults, "storage": None, "study_name": None, "enqueue": []}
    supports_workers = True
    supports_warm_start = True


@pytest.fixture
def friendly():
    register_searcher("friendly", WorkerFriendlySearcher)
    yield "friendly"
    SEARCHERS.unregister("friendly")


def test_the_built_in_capabilities():
    assert searchers_that(lambda s: s.supports_workers) == ["optuna"]
    assert searchers_that(lambda s: s.supports_warm_start) == ["optuna"]
    assert searchers_that(lambda s: s.loads_agent) == [AGENT_SEARCHER] == ["ppo"]
    assert [n for n in SEARCHERS.names() if not searcher_class(n).compared_with_uniform] == ["uniform"]


def test_optuna_keeps_its_study_in_the_output_folder_under_the_experiment_name(tmp_path):
    cfg = parse_config(experiment(tmp_path, searcher="optuna", sampler="nsga2"))
    params = searcher_params(cfg, tmp_path / "out")
    assert params == {"sampler": "nsga2", "storage": f"sqlite:///{(tmp_path / 'out' / 'study.db').resolve()}", "study_name": "caps"}
    cfg = parse_config(experiment(tmp_path, searcher="optuna", storage="sqlite:///elsewhere.db", study="s",
                                  params={"study_name": "mine", "n_startup_trials": 2}))
    assert searcher_params(cfg, tmp_path) == {"sampler": "tpe", "storage": "sqlite:///elsewhere.db", "study_name": "mine", "n_startup_trials": 2}


def test_ppo_saves_its_agent_in_the_output_folder_with_checkpoints_unless_told_not_to(tmp_path):
    cfg = parse_config(experiment(tmp_path, searcher="ppo"))
    assert searcher_params(cfg, tmp_path / "out") == {"save_agent": str(tmp_path / "out" / "agent"), "checkpoint_every": 20}
    cfg = parse_config(experiment(tmp_path, searcher="ppo", params={"save_agent": None}))
    assert searcher_params(cfg, tmp_path / "out") == {"save_agent": None, "checkpoint_every": 0}


def test_a_searcher_without_experiment_parameters_gets_search_params_only(tmp_path):
    cfg = parse_config(experiment(tmp_path, searcher="random", params={"drop_prob": 0.1}))
    assert searcher_params(cfg, tmp_path) == {"drop_prob": 0.1}


def test_workers_need_a_searcher_that_supports_them(tmp_path, friendly):
    cfg = parse_config(experiment(tmp_path, searcher="ppo", workers=2))
    with pytest.raises(ConfigError) as info:
        sized_for_workers(cfg)
    assert str(info.value) == ("search.workers: 2 worker processes need a searcher that supports workers ('optuna', 'friendly'); "
                               "'ppo' runs in one process (set search.workers to 1)")
    if len(os.sched_getaffinity(0)) >= 2:  # a user's searcher that supports workers is given them
        assert sized_for_workers(parse_config(experiment(tmp_path, searcher="friendly", workers=2))).search.workers == 2


def test_a_worker_refuses_a_study_stored_by_a_searcher_without_worker_support(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=storage, study_name="s")
    publish_study(study, parse_config(experiment(tmp_path, searcher="random")).model_dump(mode="json"), 3)
    with pytest.raises(ConfigError, match=r"^--study: 's' was stored by searcher 'random', which does not support workers$"):
        run_worker(storage, "s")


def test_warm_start_needs_a_searcher_that_takes_policies_first(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(json.dumps(experiment(tmp_path, searcher="random")))
    with pytest.raises(ConfigError) as info:
        search_command(path, warm_start=str(tmp_path / "policy.json"))
    assert str(info.value) == ("--warm-start: enqueues a policy in a searcher that takes policies to evaluate first ('optuna'); "
                               "search.searcher is 'random'")


def test_agent_runs_the_agent_searcher_unless_the_config_or_searcher_option_names_one_that_loads_agents(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(json.dumps(experiment(tmp_path, searcher="optuna")))
    assert agent_searcher(path, []) == AGENT_SEARCHER
    assert agent_searcher(path, ["search.searcher=ppo"]) == "ppo"
    with pytest.raises(ConfigError) as info:
        agent_searcher(path, ["search.searcher=ddpg"])
    assert str(info.value) == "--agent: searcher 'ddpg' does not load a saved agent; drop --searcher ddpg or choose one that does ('ppo')"


def test_restart_forgets_the_optuna_study_and_the_ppo_checkpoint(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(storage=storage, study_name="s")
    OptunaSearcher.forget({"storage": storage, "study_name": "s"})
    assert optuna.get_all_study_names(storage) == []
    OptunaSearcher.forget({"storage": storage, "study_name": "s"})  # nothing stored: nothing to do
    folder = tmp_path / "agent"
    folder.mkdir()
    for path in checkpoint_paths(folder):
        path.write_text("x")
    (folder / "agent.zip").write_text("the saved bundle")
    PPOSearcher.forget({"save_agent": str(folder)})
    assert [p.name for p in folder.iterdir()] == ["agent.zip"]


def test_an_entry_that_is_not_a_searcher_class_is_a_config_error():
    register_searcher("fn", lambda params, **kw: None)
    try:
        with pytest.raises(ConfigError, match=r"^search.searcher: 'fn' is <function .*>, not a subclass of autoprune.search.Searcher$"):
            searcher_class("fn")
    finally:
        SEARCHERS.unregister("fn")
