"""One source for each setting, and registries as the only name lists.

* every config default is the library's default, and the config becomes library settings in
  one function (:func:`autoprune.config.settings.library_settings`);
* searchers, samplers, importance criteria and latency backends are named from their
  registries, by a name registered from Python or by ``"package.module:Class"``.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import optuna
import plugins_for_tests
import pytest
import torch
from helpers import tiny_experiment

from autoprune.app.estimate import estimate
from autoprune.app.experiment import output_dir, run_search
from autoprune.config.loading import parse_config
from autoprune.config.schema import dump_config
from autoprune.config.sections import (
    BudgetConfig,
    FinetuneConfig,
    LatencyConfig,
    ProxyConfig,
    RewardConfig,
    TrainConfig,
)
from autoprune.config.settings import library_settings
from autoprune.errors import ConfigError
from autoprune.graph.importance import IMPORTANCES, register_importance
from autoprune.graph.policy import Policy
from autoprune.graph.prunable import PrunableGraph
from autoprune.graph.surgery import apply_policy
from autoprune.measure.backends import BACKENDS, DEFAULT_THREADS, register_backend
from autoprune.measure.latency import PairedTimer, measure_latency
from autoprune.measure.settings import LatencySettings
from autoprune.measure.table import LatencyTable
from autoprune.objective.budget import Budget, Reward
from autoprune.objective.proxy import ProxySettings
from autoprune.search import SEARCHERS, get_searcher
from autoprune.search.samplers import SAMPLERS, make_sampler
from autoprune.training.baseline import TrainSettings
from autoprune.training.finetune import FinetuneSettings

MINIMAL = {"model": {"name": "mlp"}}

#: Each config section and the library dataclass it becomes.
SECTIONS = [
    (TrainConfig, TrainSettings), (ProxyConfig, ProxySettings), (LatencyConfig, LatencySettings),
    (BudgetConfig, Budget), (RewardConfig, Reward), (FinetuneConfig, FinetuneSettings),
]
#: Config fields the library has no field for (documented in the schema).
CONFIG_ONLY = {"predictor", "target"}  # predictor: removed; target: filled in by the schema's validator


def config_error(data: dict, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, overrides=overrides or [])
    message = str(info.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------ one source for each setting
@pytest.mark.parametrize(("section", "library"), SECTIONS, ids=lambda c: c.__name__)
def test_every_config_default_is_the_library_default(section, library):
    defaults = {f.name: f.default for f in dataclasses.fields(library)}
    for name, field in section.model_fields.items():
        if name in CONFIG_ONLY:
            continue
        assert name in defaults, f"{section.__name__}.{name} has no field in {library.__name__}"
        assert field.default == defaults[name], f"{section.__name__}.{name}: config {field.default!r} != library {defaults[name]!r}"


def test_latency_warmup_has_one_default_in_config_and_library():
    assert LatencyConfig().warmup == LatencySettings().warmup == 5


def test_training_epochs_default_to_the_15_the_readme_promises():
    assert TrainConfig().epochs == TrainSettings().epochs == 15
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "`epochs` (15)" in readme


def test_thread_count_has_one_default_everywhere():
    assert LatencySettings().threads == LatencyConfig().threads == DEFAULT_THREADS
    for fn in (measure_latency, PairedTimer.__init__, LatencyTable.__init__):
        assert inspect.signature(fn).parameters["threads"].default == DEFAULT_THREADS, fn.__qualname__
    assert inspect.signature(estimate).parameters["latency"].default == LatencySettings()


def test_budget_target_has_one_default():
    cfg = parse_config(MINIMAL)
    assert cfg.budget.target == Budget().target == library_settings(cfg).budget.target
    only_ms = library_settings(parse_config({**MINIMAL, "budget": {"target_ms": 4.0}})).budget
    assert (only_ms.target, only_ms.target_ms) == (None, 4.0)
    assert only_ms.target_ratio(8.0) == 0.5


def test_every_section_field_reaches_the_library_settings():
    cfg = parse_config({
        **MINIMAL, "seed": 3,
        "train": {"epochs": 2, "batch_size": 32, "lr": 0.1, "weight_decay": 0.0, "augment": False},
        "proxy": {"bn_batches": 3, "bn_batch_size": 16, "val_samples": None, "neighbours": 5},
        "latency": {"batch_size": 4, "threads": 1, "warmup": 1, "rounds": 7, "rel_ci": None},
        "budget": {"metric": "macs", "target": 0.3},
        "reward": {"kind": "soft", "penalty": 1.0, "exponent": -0.1},
        "finetune": {"epochs": 2, "lr": 0.5, "batch_size": 8, "optimizer": "adamw", "schedule": "constant",
                     "distill": True, "temperature": 2.0, "alpha": 0.5},
    })
    s = library_settings(cfg)
    assert s.train == TrainSettings(epochs=2, batch_size=32, lr=0.1, weight_decay=0.0, augment=False, seed=3)
    assert s.proxy == ProxySettings(bn_batches=3, bn_batch_size=16, val_samples=None, metric="accuracy", neighbours=5)
    assert s.latency == LatencySettings(batch_size=4, threads=1, warmup=1, rounds=7, rel_ci=None)
    assert s.budget == Budget(metric="macs", target=0.3)
    assert s.reward == Reward(kind="soft", penalty=1.0, exponent=-0.1)
    assert s.finetune == FinetuneSettings(epochs=2, lr=0.5, batch_size=8, optimizer="adamw", schedule="constant",
                                          distill=True, temperature=2.0, alpha=0.5, seed=3)
    assert (s.recover.epochs, s.recover.lr, s.recover.seed) == (0.2, 0.5, 3)


def test_soft_reward_is_documented_as_the_code_applies_it_to_every_policy():
    soft = Reward(kind="soft", exponent=-0.07)
    assert soft(0.9, 0.25, 0.5) > 0.9 > soft(0.9, 1.0, 0.5)  # under budget earns a little, over loses a little
    doc = " ".join(RewardConfig.__doc__.split())
    assert "``acc * (c/t) ** exponent``, applied to every policy" in doc
    assert "r > 1" not in doc
    readme = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text().split())
    assert "`acc * (c/t) ** exponent` applied to every policy" in readme


def test_measured_predictor_is_refused_with_a_one_line_reason():
    message = config_error({**MINIMAL, "latency": {"predictor": "measured"}})
    assert message.startswith("config: latency.predictor: 'measured' is not allowed; allowed: only 'table'")
    assert "delete latency.predictor" in message


def test_old_configs_with_the_table_predictor_still_load_and_are_not_written_back():
    cfg = parse_config({**MINIMAL, "latency": {"predictor": "table"}})
    assert "predictor" not in dump_config(cfg) and "latency.predictor" not in cfg.flat()


def test_output_dir_is_resolved_once_by_the_schema_and_used_as_it_is(tmp_path):
    cfg = parse_config({**MINIMAL, "name": "r20", "output_dir": str(tmp_path / "{name}" / "out")})
    assert cfg.output_dir == str(tmp_path / "r20" / "out")
    assert output_dir(cfg) == Path(cfg.output_dir) and Path(cfg.output_dir).is_dir()


# ------------------------------------------------------------------ registries are the only name lists
@pytest.mark.parametrize(("field", "registry"), [
    ("search.searcher", SEARCHERS), ("search.sampler", SAMPLERS), ("pruning.importance", IMPORTANCES), ("latency.backend", BACKENDS),
])
def test_unknown_name_gives_one_line_listing_the_registry(field, registry):
    message = config_error(MINIMAL, [f"{field}=nosuch"])
    assert message == f"override '{field}=nosuch': {field}: 'nosuch' is not allowed; allowed: {registry.allowed()}"
    assert all(name in message for name in registry.names())


def test_a_backend_registered_from_python_can_be_chosen_in_a_config():
    assert config_error(MINIMAL, ["latency.backend=counting"]).endswith("or 'package.module:Class'")
    register_backend("counting", "plugins_for_tests:CountingEagerBackend")
    try:
        assert parse_config(MINIMAL, overrides=["latency.backend=counting"]).latency.backend == "counting"
    finally:
        BACKENDS.unregister("counting")
    assert config_error(MINIMAL, ["latency.backend=counting"]).endswith("or 'package.module:Class'")


def test_an_importance_registered_from_python_can_be_chosen_in_a_config():
    register_importance("last-first", plugins_for_tests.LastChannelsFirstImportance)
    try:
        assert parse_config(MINIMAL, overrides=["pruning.importance=last-first"]).pruning.importance == "last-first"
    finally:
        IMPORTANCES.unregister("last-first")


@pytest.mark.parametrize("field", ["latency.backend", "search.searcher", "pruning.importance", "search.sampler"])
def test_a_reference_that_does_not_import_is_one_line_naming_the_field(field):
    message = config_error(MINIMAL, [f"{field}=plugins_for_tests:Nope"])
    assert message == (f"override '{field}=plugins_for_tests:Nope': {field}: "
                       "module 'plugins_for_tests' has no attribute 'Nope' (from 'plugins_for_tests:Nope')")


def test_a_user_importance_class_decides_which_channels_surgery_keeps(make_model, example_input):
    model = make_model("mlp")
    graph = PrunableGraph(model, example_input)
    pruned = apply_policy(model, Policy({"net.1": 0.5}), graph=graph, importance="plugins_for_tests:LastChannelsFirstImportance")
    kept = pruned.net[1].weight.shape[0]
    assert torch.equal(pruned.net[1].weight, model.net[1].weight[:kept])  # the first channels, as the class scored them


def test_an_importance_giving_the_wrong_shape_is_a_config_error(make_model, example_input):
    register_importance("scalar", lambda: (lambda group: torch.tensor(1.0)))
    model = make_model("mlp")
    try:
        with pytest.raises(ConfigError, match=r"^pruning.importance: 'scalar' gave \(\) for unit 'net.1'; expected a 1-D tensor of \d+ scores$"):
            apply_policy(model, Policy({"net.1": 0.5}), graph=PrunableGraph(model, example_input), importance="scalar")
    finally:
        IMPORTANCES.unregister("scalar")


def test_a_built_in_name_cannot_be_unregistered():
    with pytest.raises(ConfigError, match=r"cannot unregister importance criterion 'l1'"):
        IMPORTANCES.unregister("l1")


def test_a_sampler_reference_builds_that_optuna_sampler():
    cfg = parse_config(MINIMAL, overrides=["search.sampler=optuna.samplers:RandomSampler"])
    sampler = make_sampler(cfg.search.sampler, {}, seed=3, has_ints=False)
    assert isinstance(sampler, optuna.samplers.RandomSampler)
    searcher = get_searcher("optuna", {"sampler": cfg.search.sampler}, progress=False)
    assert searcher.params["sampler"] == "optuna.samplers:RandomSampler"


def test_searcher_backend_and_importance_named_as_module_class_run_a_search(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOPRUNE_CACHE", str(tmp_path / "cache"))
    cfg = parse_config(tiny_experiment(
        tmp_path, name="plugins", train={"epochs": 1},
        latency={"backend": "plugins_for_tests:CountingEagerBackend"},
        pruning={"importance": "plugins_for_tests:LastChannelsFirstImportance"},
        search={"searcher": "plugins_for_tests:HalfEverywhereSearcher", "episodes": 2, "params": {"ratio": 0.6}},
    ))
    before = plugins_for_tests.CountingEagerBackend.prepared
    run = run_search(cfg, progress=False)
    assert run.result.searcher == "half-everywhere" and run.result.extras["ratio"] == 0.6
    assert run.result.episodes == 2 and all(e.policy.ratios == {u: 0.6 for u in run.evaluator.unit_names} for e in run.result.history)
    assert plugins_for_tests.CountingEagerBackend.prepared > before  # the dense model and the candidates were timed on it
    assert "plugins_for_tests:LastChannelsFirstImportance" in run.evaluator.graph._importance_cache


def test_pruning_defaults_are_the_library_defaults():
    from autoprune.config.sections import PruningConfig
    from autoprune.objective.evaluator import PolicyEvaluator

    params = inspect.signature(PolicyEvaluator).parameters
    assert PruningConfig().importance == params["importance"].default == inspect.signature(apply_policy).parameters["importance"].default
    assert PruningConfig().max_ratio == params["max_ratio"].default
    assert PruningConfig().drop_blocks == params["allow_drop"].default
