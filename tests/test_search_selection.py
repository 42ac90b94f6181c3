"""Multi-fidelity selection: the proxy screens, a short fine-tune of the best few feasible candidates makes the final choice."""

from __future__ import annotations

import csv

import pytest
import torch
from helpers import search, tiny_experiment

from autoprune.app.experiment import run_search
from autoprune.config.loading import parse_config
from autoprune.config.settings import selection_settings
from autoprune.errors import ConfigError
from autoprune.graph.policy import Policy
from autoprune.objective.proxy import accuracy
from autoprune.search.selection import LEVEL, SelectionSettings, finalists, select_on_higher_fidelity
from autoprune.training.finetune import FinetuneSettings
from autoprune.training.screen import short_finetune_accuracy, steps_as_epochs


@pytest.fixture
def searched(fresh_mlp_evaluator):
    """Eight random policies on the trained digits MLP under a MAC budget (all repaired into it)."""
    return search("random", fresh_mlp_evaluator, 8, seed=1)


def test_the_finalists_are_the_best_distinct_feasible_candidates_by_reward_with_the_searchs_choice_first(searched):
    top = finalists(searched, 3)
    assert top[0] is searched.best
    feasible = sorted((e for e in searched.history if e.metrics.feasible), key=lambda e: e.metrics.reward, reverse=True)
    assert [e.metrics.reward for e in top] == [e.metrics.reward for e in feasible[:3]]
    assert len({e.policy.key() for e in top}) == 3
    assert finalists(searched, 0) == []


def test_the_final_choice_is_made_on_the_higher_fidelity_and_recorded(searched):
    top = finalists(searched, 3)
    # a score that reverses the proxy's order: the last finalist must win
    order = {e.policy.key(): i for i, e in enumerate(top)}
    chosen = select_on_higher_fidelity(searched, lambda p: order[p.key()], SelectionSettings(finalists=3), progress=False)
    assert chosen.best is top[-1] and chosen.best is not searched.best
    assert set(chosen.finetuned) == {e.index for e in top}
    record = chosen.extras["selection"]
    assert (record["level"], record["proxy_choice"], record["chosen"]) == (LEVEL, searched.best.index, top[-1].index)
    assert [f["episode"] for f in record["finalists"]] == [e.index for e in top]
    assert searched.best is top[0] and not searched.finetuned, "the searched result is left as it was"


def test_one_finalist_leaves_the_proxys_choice(searched):
    calls = []
    same = select_on_higher_fidelity(searched, lambda p: calls.append(p) or 0.0, SelectionSettings(finalists=1), progress=False)
    assert same.best is searched.best and not calls


def test_the_history_csv_has_the_short_fine_tune_score_of_the_finalists_only(searched, tmp_path):
    top = finalists(searched, 2)
    chosen = select_on_higher_fidelity(searched, lambda p: 0.5, SelectionSettings(finalists=2), progress=False)
    chosen.write_history_csv(tmp_path / "h.csv")
    rows = list(csv.DictReader((tmp_path / "h.csv").open()))
    scored = {int(r["episode"]) for r in rows if r[LEVEL]}
    assert scored == {e.index for e in top}
    assert all(float(r[LEVEL]) == 0.5 for r in rows if r[LEVEL])


def test_a_short_fine_tune_with_distillation_recovers_a_heavily_pruned_mlp_and_leaves_the_dense_model_alone(fresh_mlp_evaluator):
    ev = fresh_mlp_evaluator
    dense = {k: v.clone() for k, v in ev.model.state_dict().items()}
    policy = Policy.uniform(ev.unit_names, 0.75)
    proxy = ev.evaluate(policy).accuracy
    settings = FinetuneSettings(lr=0.05, batch_size=64, augment=False)
    score = short_finetune_accuracy(ev, policy, settings, steps=40)
    assert 0.0 <= score <= 1.0 and score > proxy, (score, proxy)
    assert score == short_finetune_accuracy(ev, policy, settings, steps=40), "seeded: the same steps give the same score"
    assert all(torch.equal(v, ev.model.state_dict()[k]) for k, v in dense.items())
    assert accuracy(ev.model, ev.data.val) == pytest.approx(ev.scorer.dense_score(), abs=0.05)
    with pytest.raises(ValueError, match="steps"):
        short_finetune_accuracy(ev, policy, settings, steps=0)


def test_steps_are_converted_to_a_fraction_of_an_epoch():
    assert steps_as_epochs(50, 60_000, 128) == pytest.approx(50 / 469)
    assert steps_as_epochs(10, 1000, 100) == 1.0


def test_selection_settings_come_from_the_search_section_and_bad_values_are_config_errors(tmp_path):
    assert selection_settings(parse_config(tiny_experiment(tmp_path))) == SelectionSettings()
    cfg = parse_config(tiny_experiment(tmp_path, search={"finalists": 5, "finalist_steps": 7}))
    assert selection_settings(cfg) == SelectionSettings(finalists=5, finalist_steps=7)
    with pytest.raises(ConfigError, match="finalists"):
        parse_config(tiny_experiment(tmp_path, search={"finalists": -1}))
    with pytest.raises(ConfigError, match="search.finalist_steps"):
        SelectionSettings(finalist_steps=0)


def test_autoprune_search_chooses_on_the_short_fine_tune_and_writes_it_to_the_history(tmp_path):
    cfg = parse_config(tiny_experiment(tmp_path, search={"episodes": 6, "finalists": 2, "finalist_steps": 5},
                                       tracking={"register": False}))
    run = run_search(cfg, progress=False)
    record = run.result.extras["selection"]
    assert len(record["finalists"]) == 2 and run.result.best.index == record["chosen"]
    assert run.result.finetuned[run.result.best.index] == max(run.result.finetuned.values())
    rows = list(csv.DictReader(run.history_path.open()))
    assert sum(1 for r in rows if r[LEVEL]) == 2
    assert set(run.result.extras["seeds"]) == {"uniform", "global"}, "seeding is on by default (the MLP has no blocks)"
