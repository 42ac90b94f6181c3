"""A deep decoder's search starts near the target and stays there: seeds from the baselines, depth bounded by what the budget needs.

A randomly initialised 8-layer Llama (4 query heads in 2 KV groups, hidden 32) on real fortunes,
under a MAC budget (exact, so nothing here depends on the machine's speed). Before this, the
``layer_drop`` seed dropped the deepest layers whatever their influence, and Optuna's proposals
dropped each layer on a coin flip and pruned every unit at a ratio drawn from ``[0, max_ratio]``,
far past the target (on SmolLM2-135M: 17 of 30 layers, 0.44 of dense latency for a target of 0.7).
"""

from __future__ import annotations

import pytest
from helpers import search

from autoprune.zoo.text import DEBIAN_FORTUNES, load_fortunes

pytest.importorskip("transformers", reason="needs the llm extra: pip install 'autoprune[llm]'")
pytestmark = pytest.mark.skipif(not (DEBIAN_FORTUNES / "fortunes").is_file(), reason="Debian package 'fortunes' not installed")

TARGET = 0.7


@pytest.fixture(scope="module")
def evaluator():
    from autoprune.measure.settings import LatencySettings
    from autoprune.objective.budget import Budget
    from autoprune.objective.decoder_evaluator import DecoderEvaluator
    from autoprune.zoo.decoder import tiny_decoder
    from autoprune.zoo.lm_text import lm_corpus

    text = load_fortunes(limit=200)
    dec = tiny_decoder(text.train, vocab_size=256, layers=8, heads=4, kv_heads=2, hidden=32, mlp=64, seed=0)
    corpus = lm_corpus(text, dec.tokenizer, seq_len=32)
    latency = LatencySettings(threads=1, rounds=3, warmup=1, prompt_tokens=16, new_tokens=4)
    return DecoderEvaluator(dec.model, corpus, budget=Budget(metric="macs", target=TARGET), latency=latency)


def fresh(ev):
    return ev.with_budget(ev.budget)


def least_influential(ev, k: int) -> set[str]:
    return set(sorted(ev.block_names, key=lambda b: ev.block_importance[b])[:k])


def test_a_decoders_layers_are_ranked_by_block_influence_and_the_first_layer_is_never_offered(evaluator):
    assert set(evaluator.block_importance) == {f"model.layers.{i}" for i in range(8)}
    assert all(0.0 <= v <= 2.0 for v in evaluator.block_importance.values())
    assert "model.layers.0" not in evaluator.block_names


def test_the_layer_drop_seed_drops_the_layers_of_least_block_influence_not_the_deepest(evaluator):
    from autoprune.search.pool import baseline_pool

    ev = fresh(evaluator)
    seed = baseline_pool(ev)["layer_drop"]
    k = len(seed.drop)
    assert 0 < k < len(ev.block_names) and not any(seed.ratios.values())
    assert set(seed.drop) == least_influential(ev, k)
    assert set(seed.drop) != set(ev.block_names[-k:]), "this decoder's deepest layers are not its least influential"
    assert ev.predicted_value(seed.ratios, seed.drop) <= TARGET


def test_the_minitron_seed_prunes_only_the_mlp_width_at_one_ratio_and_keeps_heads_and_layers(evaluator):
    from autoprune.search.pool import baseline_pool

    ev = fresh(evaluator)
    pool = baseline_pool(ev)
    assert list(pool) == ["uniform", "minitron", "layer_drop"]
    seed = pool["minitron"]
    assert set(seed.ratios) == {u for u in ev.unit_names if u.endswith(".mlp")} and len(set(seed.ratios.values())) == 1
    assert not seed.drop and TARGET - 0.05 <= ev.predicted_value(seed.ratios, seed.drop) <= TARGET


def test_a_proposal_moved_onto_the_target_keeps_its_shape_and_drops_only_as_many_layers_as_the_target_needs(evaluator):
    from autoprune.graph.policy import Policy
    from autoprune.search.at_target import at_target, max_drops

    ev = fresh(evaluator)
    most = max_drops(ev)
    assert most == len(least_influential(ev, 3))
    ratios = {u: (0.6 if u.endswith(".mlp") else 0.2) for u in ev.unit_names}
    far = Policy(ratios, tuple(ev.block_names))  # every layer but the first dropped: far past the target
    moved = at_target(ev, far, most_drops=most)
    assert set(moved.drop) == least_influential(ev, most) and not any(moved.ratios.values())  # the depth-only policy
    assert ev.predicted_value(moved.ratios, moved.drop) <= TARGET
    half = at_target(ev, Policy(ratios, tuple(ev.block_names[::2])), most_drops=most)  # 4 of 7 layers: round(4 * 3 / 7) = 2
    assert set(half.drop) == set(sorted(ev.block_names[::2], key=lambda b: ev.block_importance[b])[:2])
    assert TARGET - 0.05 <= ev.predicted_value(half.ratios, half.drop) <= TARGET and any(half.ratios.values())
    mild = at_target(ev, Policy(ratios, ()), most_drops=most)
    assert not mild.drop and TARGET - 0.05 <= ev.predicted_value(mild.ratios, mild.drop) <= TARGET
    mlp, heads = ("model.layers.3.mlp", "model.layers.3.self_attn.query_heads")
    assert mild.ratios[mlp] == pytest.approx(3 * mild.ratios[heads])  # the proposal's shape, one factor


def test_optunas_proposals_on_a_decoder_are_at_the_target_with_no_more_layers_dropped_than_it_needs(evaluator):
    from autoprune.search.at_target import max_drops
    from autoprune.search.pool import baseline_pool

    ev = fresh(evaluator)
    pool = baseline_pool(ev)
    result = search("optuna", ev, 9, seeds=pool)
    seeded = set(result.extras["seeds"].values())
    proposed = [e for e in result.history if e.index not in seeded]
    assert len(seeded) == len(pool) and len(proposed) == 9 - len(pool)
    assert len({e.policy.key() for e in proposed}) > 1, "proposals keep their own shapes"
    for e in proposed:
        assert len(e.policy.drop) <= max_drops(ev), e.policy.drop
        assert TARGET - 0.08 <= e.metrics.macs_ratio <= TARGET, e.metrics.macs_ratio
        assert e.metrics.feasible


def test_the_returned_policy_is_at_least_as_close_to_the_dense_model_as_the_best_seed(evaluator):
    from autoprune.search.at_target import max_drops
    from autoprune.search.pool import baseline_pool

    ev = fresh(evaluator)
    pool = baseline_pool(ev)
    result = search("optuna", ev, 8, seeds=pool)
    by_key = {e.policy.key(): e for e in result.history}
    best_seed_kl = min(by_key[p.key()].metrics.details["kl"] for p in pool.values())
    assert result.best.metrics.feasible and result.best.metrics.details["kl"] <= best_seed_kl
    assert len(result.best.policy.drop) <= max_drops(ev)


def test_a_resumed_study_reads_back_the_policies_its_trials_evaluated_not_their_raw_proposals(evaluator, tmp_path):
    url = f"sqlite:///{tmp_path}/study.db"
    first = search("optuna", fresh(evaluator), 3, storage=url)
    resumed = search("optuna", fresh(evaluator), 4, storage=url)
    assert [e.policy.key() for e in resumed.history[:3]] == [e.policy.key() for e in first.history]
    assert all(e.metrics.macs_ratio <= TARGET for e in resumed.history)
