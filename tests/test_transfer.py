"""Policy transfer: mapping a policy across architectures by stage and depth, block drops, and refitting to a budget."""

import json

import pytest
from helpers import fast_settings

from autoprune.app.uris import load_policy
from autoprune.errors import BudgetError, ConfigError, PolicyError
from autoprune.formats.policy_file import policy_document
from autoprune.graph.policy import Policy, check_policy_fits, model_fingerprint
from autoprune.objective.budget import Budget
from autoprune.objective.evaluator import PolicyEvaluator
from autoprune.paths import write_json_atomic
from autoprune.transfer.mapping import Candidate, MappingRow, transfer_policy
from autoprune.transfer.refit import (
    MARGIN,
    SLACK,
    _next_goal,
    candidate_rank,
    candidate_table,
    drop_candidates,
    fit_measured,
    mapping_table,
    refit_to_budget,
    shallower_drop,
    transfer,
)

TARGET = 0.5


@pytest.fixture(scope="module")
def resnet32_evaluator(make_model, digits) -> PolicyEvaluator:
    """An evaluator over an untrained ResNet-32 under a MAC budget (exact feasibility)."""
    return PolicyEvaluator(make_model("resnet32"), digits, budget=Budget(metric="macs", target=TARGET), **fast_settings())


def deepening_policy(graph, low=0.1, high=0.6, drop=()):
    """Ratios growing linearly with depth: low for the first unit, high for the last."""
    return Policy({u.name: low + (high - low) * u.features.depth for u in graph.units}, tuple(drop))


def stage_of(name):
    """ResNet stage of a unit or block name (conv1 is the stem, stage 1)."""
    return name.split(".")[0] if name.startswith("layer") else "layer1"


def inner_convs(graph):
    return [u.name for u in graph.units if not u.features.coupled]


# ----------------------------------------------------------------- transfer_policy
def test_same_architecture_transfer_is_the_identity(graphs):
    g = graphs["resnet20"]
    policy = deepening_policy(g, drop=("layer1.1", "layer3.2"))
    mapped, rows = transfer_policy(policy, model_fingerprint(g), g)
    assert mapped == policy
    assert {r.how for r in rows} == {"same name"}
    assert [r.name for r in rows if r.kind != "block"] == g.unit_names
    assert [r.name for r in rows if r.dropped] == ["layer1.1", "layer3.2"]


def test_deeper_resnet_gets_every_unit_with_the_source_depth_profile(graphs):
    src, dst = graphs["resnet20"], graphs["resnet56"]
    mapped, rows = transfer_policy(deepening_policy(src), model_fingerprint(src), dst)
    assert list(mapped.ratios) == dst.unit_names and mapped.drop == ()
    dst.validate_policy(mapped.ratios, mapped.drop)
    inner = [mapped.ratios[n] for n in inner_convs(dst)]
    assert inner == sorted(inner) and inner[-1] - inner[0] > 0.4
    source = deepening_policy(src).ratios
    # first and last inner conv of each stage take the first and last of the source stage
    for stage in ("layer1", "layer2", "layer3"):
        s = [n for n in inner_convs(src) if stage_of(n) == stage]
        d = [n for n in inner_convs(dst) if stage_of(n) == stage]
        assert mapped.ratios[d[0]] == pytest.approx(source[s[0]]) and mapped.ratios[d[-1]] == pytest.approx(source[s[-1]])
    # residual streams map stage by stage
    for name in ("conv1", "layer2.0.shortcut.0", "layer3.0.shortcut.0"):
        assert mapped.ratios[name] == pytest.approx(source[name])
        assert next(r for r in rows if r.name == name).sources == (name,)


def test_policy_pruning_only_the_last_stage_maps_to_the_last_stage_only(graphs):
    src, dst = graphs["resnet20"], graphs["resnet56"]
    policy = Policy({n: (0.5 if stage_of(n) == "layer3" else 0.0) for n in src.unit_names})
    mapped, _ = transfer_policy(policy, model_fingerprint(src), dst)
    pruned = {n for n, r in mapped.ratios.items() if r > 0}
    assert pruned == {n for n in dst.unit_names if stage_of(n) == "layer3"}
    assert all(r == pytest.approx(0.5) for n, r in mapped.ratios.items() if n in pruned)


def test_stages_are_matched_by_rank_when_resolutions_differ(graphs):
    src, dst = graphs["resnet20"], graphs["resnet56"]
    policy = Policy({n: (0.5 if stage_of(n) == "layer3" else 0.0) for n in src.unit_names}, ("layer3.1",))
    halved = model_fingerprint(src)  # as if the source had a stride-2 stem: stages 0.5, 0.25, 0.125
    for entry in halved["units"] + halved["blocks"]:
        entry["resolution"] /= 2
    mapped, rows = transfer_policy(policy, halved, dst)
    by_resolution, rows_by_resolution = transfer_policy(policy, model_fingerprint(src), dst)
    assert mapped == by_resolution and [r.sources for r in rows] == [r.sources for r in rows_by_resolution]
    assert set(mapped.drop) == {"layer3.1", "layer3.2", "layer3.3", "layer3.4"}  # the first half, like the source
    assert "stage 0.25 <- source 0.125" in next(r.how for r in rows if r.name == "layer3.8.conv1")


def test_dropping_one_of_three_stage_blocks_drops_a_third_of_the_deeper_stage(graphs):
    src, dst = graphs["resnet20"], graphs["resnet56"]
    mapped, rows = transfer_policy(deepening_policy(src, drop=("layer1.1",)), model_fingerprint(src), dst)
    assert set(mapped.drop) == {"layer1.3", "layer1.4", "layer1.5"}  # the middle third, like the source's middle block
    dropped_rows = [r for r in rows if r.dropped]
    assert all(r.sources == ("layer1.1",) and "1/3" in r.how for r in dropped_rows)


def test_a_stage_is_never_emptied_unless_the_source_emptied_it(graphs):
    src, dst = graphs["resnet56"], graphs["resnet20"]
    most = tuple(f"layer1.{i}" for i in range(8))  # 8 of 9 -> rounds to 3 of 3, kept at 2
    mapped, _ = transfer_policy(Policy({}, most), model_fingerprint(src), dst)
    assert len(mapped.drop) == 2 and set(mapped.drop) < {"layer1.0", "layer1.1", "layer1.2"}
    every = tuple(f"layer2.{i}" for i in range(1, 9))  # every droppable block of the stage
    mapped, _ = transfer_policy(Policy({}, every), model_fingerprint(src), dst)
    assert set(mapped.drop) == {"layer2.1", "layer2.2"}


def test_drops_are_left_out_when_block_dropping_is_off(graphs):
    src, dst = graphs["resnet20"], graphs["resnet56"]
    mapped, rows = transfer_policy(deepening_policy(src, drop=("layer1.1",)), model_fingerprint(src), dst, allow_drop=False)
    assert mapped.drop == ()
    blocks = [r for r in rows if r.kind == "block"]
    assert len(blocks) == len(dst.blocks) and all("dropping is off" in r.how for r in blocks)


def test_resnet_policy_maps_onto_depthwise_mobilenet(graphs):
    src, dst = graphs["resnet20"], graphs["mobilenetv2"]
    mapped, rows = transfer_policy(deepening_policy(src, drop=("layer1.1",)), model_fingerprint(src), dst, max_ratio=0.5)
    dst.validate_policy(mapped.ratios, mapped.drop)
    assert list(mapped.ratios) == dst.unit_names and set(mapped.drop) <= set(dst.block_names)
    assert all(0.0 <= r <= 0.5 for r in mapped.ratios.values())
    assert max(mapped.ratios.values()) == 0.5  # the source's deepest ratios (up to 0.54) are clipped
    depthwise = [r for r in rows if r.kind == "depthwise"]
    assert depthwise and all("conv for depthwise" in r.how for r in depthwise)
    # the residual streams (projections) take the source's residual streams of the same stage
    assert next(r for r in rows if r.name == "blocks.5.project.0").sources == ("layer2.0.shortcut.0",)


def test_policy_without_fingerprint_cannot_be_transferred(graphs):
    g = graphs["resnet20"]
    with pytest.raises(PolicyError, match="no model fingerprint.*applied by unit names"):
        transfer_policy(deepening_policy(g), None, graphs["resnet56"])
    with pytest.raises(PolicyError, match=r"unit #0 lacks \['kind'"):
        transfer_policy(deepening_policy(g), {"units": [{"name": "conv1"}], "blocks": []}, graphs["resnet56"])
    with pytest.raises(PolicyError, match="fingerprint does not list"):
        transfer_policy(Policy({"features.0": 0.3}), model_fingerprint(g), graphs["resnet56"])
    with pytest.raises(ConfigError, match="max_ratio"):
        transfer_policy(deepening_policy(g), model_fingerprint(g), graphs["resnet56"], max_ratio=1.0)


def test_mapping_table_has_a_line_per_row():
    rows = [
        MappingRow("a.conv", "conv", 0.25, 0.5, False, ("x", "y", "z"), 0.3, 0.35, "interp depth 0.20-0.30 (conv, stage 0.5)"),
        MappingRow("a", "block", 0.2, 0.5, False, ("x",), None, None, "drop: ...", True),
    ]
    lines = mapping_table(rows).splitlines()
    assert len(lines) == 4 and lines[0].startswith("| target | kind")
    assert "x, y +1" in lines[2] and "0.300 | 0.350" in lines[2]
    assert "| drop | drop |" in lines[3]


# ----------------------------------------------------------------- refit and transfer()
def test_transferred_policy_is_refitted_to_meet_the_budget_and_keeps_its_shape(graphs, resnet32_evaluator, tmp_path):
    src, ev = graphs["resnet20"], resnet32_evaluator
    doc = policy_document(deepening_policy(src, 0.05, 0.3), model="resnet20", data="digits", metric="macs", target=0.8,
                          backend={}, searcher="random", fingerprint=model_fingerprint(src))
    policy, payload = load_policy(str(write_json_atomic(tmp_path / "policy.json", doc)))

    result = transfer(policy, payload, ev)
    assert not result.identity and result.scale > 1.0  # the source was found for a looser budget: scaled up
    assert TARGET - 0.01 <= result.predicted_value <= TARGET
    assert set(result.policy.ratios) == set(ev.unit_names)
    metrics = ev.evaluate(result.policy)
    assert metrics.feasible and metrics.value == pytest.approx(result.predicted_value, abs=1e-6)
    inner = [result.policy.ratios[n] for n in inner_convs(ev.graph)]
    assert inner == sorted(inner) and inner[0] < inner[-1]
    assert all(r.refit == result.policy.ratios[r.name] for r in result.rows if r.kind != "block")
    assert "| layer3.4.conv1 |" in mapping_table(result.rows)

    written = write_json_atomic(tmp_path / "transferred.json", result.document(model="resnet32", data="digits", backend={}))
    again, payload2 = load_policy(str(written))
    assert again == result.policy and payload2["transferred_from"]["model"] == "resnet20"
    check_policy_fits(again, ev.graph)
    assert json.loads(written.read_text())["fingerprint"]["arch_hash"] == model_fingerprint(ev.graph)["arch_hash"]


def test_refit_scales_an_over_pruned_policy_down(resnet32_evaluator):
    ev = resnet32_evaluator
    heavy = deepening_policy(ev.graph, 0.5, 0.8)
    assert ev.predicted_value(heavy.ratios, heavy.drop) < TARGET - 0.1
    fitted, scale, value = refit_to_budget(heavy, ev)
    assert 0.0 < scale < 1.0 and TARGET - 0.01 <= value <= TARGET
    assert all(fitted.ratios[n] == pytest.approx(scale * r) for n, r in heavy.ratios.items())


def test_refit_keeps_drops_and_prunes_untouched_units_only_as_a_last_resort(resnet32_evaluator):
    ev = resnet32_evaluator
    last_stage = Policy({n: 0.2 for n in ev.unit_names if stage_of(n) == "layer3"}, ("layer2.1",))
    # the last stage alone at max_ratio cannot halve the MACs
    fitted, scale, value = refit_to_budget(last_stage, ev)
    assert value <= TARGET and fitted.drop == ("layer2.1",)
    assert scale > ev.max_ratio / 0.2 and min(fitted.ratios.values()) > 0.0
    assert all(fitted.ratios[n] == ev.max_ratio for n in last_stage.ratios)
    # a looser budget is met by the last stage alone
    loose = ev.with_budget(Budget(metric="macs", target=0.8))
    fitted, scale, value = refit_to_budget(last_stage, loose)
    assert value <= 0.8 and {n for n, r in fitted.ratios.items() if r > 0} == set(last_stage.ratios)


def test_refit_drops_more_blocks_when_channels_alone_cannot_reach_the_target(resnet32_evaluator):
    ev = resnet32_evaluator.with_budget(Budget(metric="macs", target=0.02))
    every_unit_at_max = {n: ev.max_ratio for n in ev.unit_names}
    assert ev.predicted_value(every_unit_at_max, ("layer2.1",)) > 0.02  # channels alone miss it
    fitted, scale, value = refit_to_budget(Policy.uniform(ev.unit_names, 0.3, drop=("layer2.1",)), ev)
    assert value <= 0.02 and fitted.drop[0] == "layer2.1" and len(fitted.drop) > 1
    assert set(fitted.drop) <= set(ev.block_names) and len(set(fitted.drop)) == len(fitted.drop)
    # minimal: without the last added block the target is out of reach even at max_ratio
    assert ev.predicted_value(every_unit_at_max, fitted.drop[:-1]) > 0.02
    assert ev.predicted_value(fitted.ratios, fitted.drop) == pytest.approx(value)


def test_transfer_marks_blocks_the_refit_added(graphs, resnet32_evaluator):
    src = graphs["resnet20"]
    ev = resnet32_evaluator.with_budget(Budget(metric="macs", target=0.02))
    doc = policy_document(deepening_policy(src, 0.2, 0.5), model="resnet20", data="digits", metric="macs", target=0.5,
                          backend={}, searcher="optuna", fingerprint=model_fingerprint(src))
    result = transfer(Policy.from_dict(doc), doc, ev)
    added = [r for r in result.rows if r.kind == "block" and "added by the re-fit" in r.how]
    assert added and all(r.dropped for r in added)
    assert {r.name for r in result.rows if r.kind == "block" and r.dropped} == set(result.policy.drop)
    assert result.predicted_value <= 0.02


def test_drop_candidates_trade_depth_for_width_around_the_mapped_drops(graphs, resnet32_evaluator):
    ev = resnet32_evaluator
    mapped = Policy({n: 0.3 for n in ev.unit_names}, ("layer1.2", "layer2.3", "layer3.4"))
    sets = drop_candidates(mapped, ev, 3)
    assert sets[0] == mapped.drop and len(sets) == 3 and len({frozenset(d) for d in sets}) == 3
    counts = sorted(len(d) for d in sets)
    assert counts[0] < 3 < counts[-1]  # a shallower and a deeper cut
    at_max = {n: ev.max_ratio for n in ev.unit_names}
    assert all(set(d) <= set(ev.block_names) and ev.predicted_value(at_max, d) <= ev.target for d in sets)
    # deeper cuts add the block saving the most first: each deeper set extends the mapped one
    deeper = [d for d in sets if len(d) > 3]
    assert all(set(mapped.drop) < set(d) for d in deeper)
    assert drop_candidates(mapped, ev, 1) == [mapped.drop]


def test_transfer_keeps_the_best_measured_candidate(graphs, resnet32_evaluator):
    src = graphs["resnet20"]
    doc = policy_document(deepening_policy(src, 0.2, 0.5, drop=("layer1.1",)), model="resnet20", data="digits", metric="macs",
                          target=0.5, backend={}, searcher="optuna", fingerprint=model_fingerprint(src))
    ev = resnet32_evaluator.with_budget(resnet32_evaluator.budget)
    result = transfer(Policy.from_dict(doc), doc, ev, measure=True, candidates=3)
    assert len(result.candidates) >= 2 and len({frozenset(c.policy.drop) for c in result.candidates}) == len(result.candidates)
    assert all(c.metrics and c.metrics["feasible"] and c.predicted_value <= TARGET for c in result.candidates)
    best = max(result.candidates, key=lambda c: c.metrics["reward"])
    assert result.policy == best.policy and result.metrics == best.metrics
    assert {r.name for r in result.rows if r.kind == "block" and r.dropped} == set(result.policy.drop)
    assert "| yes |" in candidate_table(result)
    with pytest.raises(ConfigError, match="candidates: 0"):
        transfer(Policy.from_dict(doc), doc, ev, candidates=0)


def test_latency_transfer_measures_every_candidate_and_keeps_the_best(graphs, make_model, digits):
    # Measured latency: each candidate costs 1-3 evaluations (the lookup table's error is corrected
    # by measurement); the kept one is the best measured, feasible first.
    src = graphs["resnet20"]
    doc = policy_document(deepening_policy(src, 0.2, 0.5, drop=("layer1.1",)), model="resnet20", data="digits",
                          metric="latency", target=0.6, backend={}, searcher="optuna", fingerprint=model_fingerprint(src))
    ev = PolicyEvaluator(make_model("resnet32"), digits, budget=Budget(metric="latency", target=0.6), **fast_settings())
    result = transfer(Policy.from_dict(doc), doc, ev, measure=True, candidates=2)
    measured = [e for e in ev.history if not e.cached]
    assert len(result.candidates) == 2 and 2 <= len(measured) <= 3 * 3  # at most 3 per fit, one spare fit
    assert all(c.metrics is not None for c in result.candidates)
    key = lambda c: (bool(c.metrics["feasible"]), c.metrics["reward"])  # noqa: E731
    assert key(next(c for c in result.candidates if c.policy == result.policy)) == max(map(key, result.candidates))
    # every kept variant is one that was measured
    assert all(any(e.policy == c.policy for e in measured) for c in result.candidates)


def test_refit_raises_when_the_budget_is_unreachable(resnet32_evaluator):
    ev = resnet32_evaluator.with_budget(Budget(metric="macs", target=0.003))
    with pytest.raises(BudgetError, match="unreachable.*max_ratio 0.8"):
        refit_to_budget(Policy.uniform(ev.unit_names, 0.3), ev)
    with pytest.raises(PolicyError, match="does not have"):
        refit_to_budget(Policy({"features.0": 0.3}), resnet32_evaluator)


# ----------------------------------------------------------------- measured re-fit: using the budget
def test_over_budget_candidate_is_refitted_at_its_drop_set_with_tighter_channels(resnet32_evaluator):
    # The lookup table is off by a factor: the goal it was fitted to (0.7) lands over the real target (0.5).
    ev = resnet32_evaluator.with_budget(resnet32_evaluator.budget)
    mapped = deepening_policy(ev.graph, 0.1, 0.4, drop=("layer2.3", "layer3.4"))
    fitted, goal = fit_measured(mapped, ev, goal=ev.with_budget(Budget(metric="macs", target=0.7)))
    first, last = ev.history[0].metrics, ev.history[-1].metrics
    assert not first.feasible and first.value > 0.65  # the first fit was measured over the target ...
    m = fitted.metrics
    assert m["feasible"] and TARGET - SLACK <= m["value"] <= TARGET  # ... and re-fitted to it, not discarded
    assert fitted.policy.drop == mapped.drop  # same drop set: tighter channels, no block added
    assert fitted.scale > refit_to_budget(mapped, ev.with_budget(Budget(metric="macs", target=0.7)))[1]
    assert last.feasible and len(ev.history) == 2 and goal.target < 0.7


def test_far_under_budget_candidate_is_refitted_looser(resnet32_evaluator):
    ev = resnet32_evaluator.with_budget(resnet32_evaluator.budget)
    mapped = deepening_policy(ev.graph, 0.1, 0.4, drop=("layer2.3",))
    tight_goal = ev.with_budget(Budget(metric="macs", target=0.3))
    fitted, _ = fit_measured(mapped, ev, goal=tight_goal)
    assert ev.history[0].metrics.value < TARGET - 0.15  # measured far under: budget left unused
    assert fitted.metrics["feasible"] and TARGET - SLACK <= fitted.metrics["value"] <= TARGET
    assert fitted.policy.drop == mapped.drop and fitted.scale < refit_to_budget(mapped, tight_goal)[1]


def test_drop_set_far_under_the_target_alone_is_made_shallower(resnet32_evaluator):
    ev = resnet32_evaluator
    unpruned = {n: 0.0 for n in ev.unit_names}
    deep = tuple(ev.block_names)
    assert ev.predicted_value(unpruned, deep) < TARGET - SLACK  # the drops alone waste the budget
    shallow = shallower_drop(deep, ev)
    assert set(shallow) < set(deep) and ev.predicted_value(unpruned, shallow) >= TARGET - SLACK
    # the fewest put back: with the last one put back dropped again, the drops alone are far under
    assert any(ev.predicted_value(unpruned, (*shallow, b)) < TARGET - SLACK for b in set(deep) - set(shallow))
    mapped = Policy({n: 0.3 for n in ev.unit_names}, deep)
    assert drop_candidates(mapped, ev, 1) == [shallow]
    fresh = ev.with_budget(ev.budget)
    fitted, _ = fit_measured(mapped, fresh)
    assert set(fitted.policy.drop) == set(shallow) and fitted.metrics["feasible"]
    # channels prune what the shallower drops leave over the target (rounded to whole channel groups)
    assert fitted.scale > 0.0 and fitted.metrics["value"] > TARGET - 2 * SLACK
    assert len(fresh.history) == 1  # a MAC prediction is exact: nothing to correct by measurement
    # no proposed deeper cut leaves the budget unused by its drops alone
    for d in drop_candidates(mapped, ev, 4):
        assert ev.predicted_value(unpruned, d) >= TARGET - SLACK


def test_transfer_candidates_all_use_the_budget(graphs, resnet32_evaluator):
    src = graphs["resnet20"]
    every = tuple(src.block_names)  # mapped: every droppable block of ResNet-32 dropped, far under a 0.5 MAC target
    doc = policy_document(deepening_policy(src, 0.2, 0.5, drop=every), model="resnet20", data="digits", metric="macs",
                          target=0.5, backend={}, searcher="optuna", fingerprint=model_fingerprint(src))
    ev = resnet32_evaluator.with_budget(resnet32_evaluator.budget)
    result = transfer(Policy.from_dict(doc), doc, ev, measure=True, candidates=3)
    assert len(result.candidates) >= 2
    # every candidate is feasible and uses the budget (up to whole channel groups), none left far under it
    assert all(c.metrics["feasible"] and c.metrics["value"] >= TARGET - 2 * SLACK for c in result.candidates)
    assert result.policy == max(result.candidates, key=candidate_rank).policy
    assert len(result.policy.drop) < len(ev.block_names)


def test_candidate_rank_prefers_feasible_then_reward():
    def cand(acc, value, feasible, target=TARGET):
        reward = acc - 2.0 * max(0.0, value / target - 1.0)
        return Candidate(Policy({}), 1.0, value, {"accuracy": acc, "value": value, "feasible": feasible, "reward": reward})

    near_chance = cand(0.112, 0.226, True)
    good_but_over = cand(0.749, 0.565, False)
    refitted = cand(0.60, 0.49, True)
    assert max([good_but_over, near_chance], key=candidate_rank) is near_chance  # infeasible never wins ...
    assert max([good_but_over, near_chance, refitted], key=candidate_rank) is refitted  # ... until re-fitted to the budget
    assert max([cand(0.5, 0.40, True), cand(0.5, 0.49, True)], key=candidate_rank).metrics["value"] == 0.49  # tie: uses the budget
    failed = Candidate(Policy({}), 1.0, 0.5, {"failed": True, "reward": 9.0})
    assert max([failed, good_but_over], key=candidate_rank) is good_but_over


def test_measured_correction_interpolates_once_measurements_bracket_the_target():
    # The table predicts heavy pruning too slow: goal 0.5 measured 0.29, goal 0.86 measured 0.56 (over).
    seen = [(0.5, 0.29)]
    assert _next_goal(seen, TARGET, True) == pytest.approx(0.5 * TARGET / 0.29)  # scaled while one-sided
    seen.append((0.86, 0.56))
    g = _next_goal(seen, TARGET, False)
    assert 0.5 < g < 0.86 and g == pytest.approx(0.5 + (TARGET - MARGIN - 0.29) * 0.36 / 0.27)  # not back to 0.5 * 0.49 / 0.56
