"""A decoder LLM as a first-class experiment: `autoprune search` and `autoprune run` from one config, and its mistakes.

A tiny randomly initialised Llama (3 layers, 4 query heads in 2 KV groups, hidden 32, byte-level
BPE vocabulary of 256 trained on real fortunes) saved as a local Hugging Face folder and named
``hf:/folder``, exactly as a user names any local decoder. The text is a small real subset of
Debian's fortunes. The budget is MACs per token (exact, so no test depends on the machine's
load); latency is still measured paired in ``latency.mode`` for every candidate.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import assert_user_error, cli, merge, write_experiment

from autoprune.zoo.text import DEBIAN_FORTUNES, load_fortunes

pytest.importorskip("transformers", reason="needs the llm extra: pip install 'autoprune[llm]'")
pytestmark = pytest.mark.skipif(not (DEBIAN_FORTUNES / "fortunes").is_file(), reason="Debian package 'fortunes' not installed")

from autoprune.zoo.decoder import load_decoder, tiny_decoder  # noqa: E402

CONTEXT = 256


@pytest.fixture(scope="module")
def decoder_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-decoder")
    dec = tiny_decoder(load_fortunes(limit=120).train, vocab_size=256, layers=3, heads=4, kv_heads=2, hidden=32, mlp=64, max_positions=CONTEXT)
    dec.model.save_pretrained(folder)
    dec.tokenizer.save_pretrained(folder)
    return folder


def decoder_config(tmp_path: Path, decoder_dir: Path, **over) -> dict:
    cfg = {
        "name": "tiny-decoder",
        "output_dir": str(tmp_path / "out"),
        "model": {"name": f"hf:{decoder_dir}"},
        "data": {"max_length": 32, "limit": 120},  # data.name: fortunes is the decoder's default
        "budget": {"metric": "macs", "target": 0.7},
        "latency": {"threads": 1, "rounds": 3, "warmup": 1, "prompt_tokens": 16, "new_tokens": 4},
        "search": {"searcher": "optuna", "episodes": 5},
        "finetune": {"steps": 12, "lr": 3e-3, "optimizer": "adamw", "batch_size": 4, "temperature": 1.0},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"},  # a real MLflow store (its file store is deprecated in MLflow 3)
    }
    return merge(cfg, **over)


def write(tmp_path: Path, cfg: dict) -> str:
    return str(write_experiment(tmp_path / "exp.yaml", cfg))


# ------------------------------------------------------------------ config
def test_a_decoder_config_defaults_to_fortunes_the_kl_proxy_and_activation_importance(tmp_path, decoder_dir):
    from autoprune.config.loading import parse_config

    cfg = parse_config(decoder_config(tmp_path, decoder_dir))
    assert (cfg.data.name, cfg.proxy.metric, cfg.pruning.importance, cfg.latency.mode) == ("fortunes", "kl", "activation", "decode")
    assert parse_config({"model": {"name": "smollm2"}}).data.name == "fortunes"


def test_latency_mode_outside_prefill_and_decode_is_one_line_naming_field_value_and_allowed(tmp_path, decoder_dir, capsys):
    res = cli(capsys, "config", write(tmp_path, decoder_config(tmp_path, decoder_dir, latency={"mode": "fast"})))
    assert_user_error(res, "latency.mode", "'fast'", "prefill, decode")


def test_autoprune_config_says_the_decoder_latency_settings_do_not_apply_to_other_models(tmp_path, capsys):
    res = cli(capsys, "config", write(tmp_path, {"model": {"name": "mlp"}, "data": {"name": "digits"}}))
    assert res.code == 0, res.err
    assert "# latency.mode, latency.prompt_tokens and latency.new_tokens apply to decoder LLMs only" in res.out


@pytest.mark.parametrize(("over", "says"), [
    ({"data": {"name": "digits", "limit": None}}, "data.name: 'digits' is not text; the decoder"),
    ({"proxy": {"metric": "accuracy"}}, "proxy.metric: 'accuracy' does not fit the decoder"),
    ({"latency": {"backend": "onnxruntime"}}, "latency.backend: 'onnxruntime' cannot time a decoder LLM"),
    ({"latency": {"prompt_tokens": 64}}, "latency.prompt_tokens: 64 is above data.max_length 32"),
    ({"export": {"quantize": True}}, "export.quantize: not allowed with the decoder"),
])  # fmt: skip
def test_settings_that_do_not_fit_a_decoder_are_refused_by_name(tmp_path, decoder_dir, capsys, over, says):
    assert_user_error(cli(capsys, "search", write(tmp_path, decoder_config(tmp_path, decoder_dir, **over))), says)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ search
def test_search_through_the_cli_finds_a_feasible_policy_over_kv_groups_query_heads_mlp_and_layers(tmp_path, decoder_dir, capsys):
    res = cli(capsys, "search", write(tmp_path, decoder_config(tmp_path, decoder_dir)))
    assert res.code == 0, res.err
    doc = json.loads((tmp_path / "out" / "policy.json").read_text())
    assert doc["metrics"]["feasible"] is True and doc["metrics"]["macs_ratio"] <= 0.7
    roles = {name.rsplit(".", 1)[1] for name in doc["ratios"]}
    assert roles == {"kv_groups", "query_heads", "mlp"} and len(doc["ratios"]) == 9
    assert doc["backend"]["settings"]["mode"] == "decode" and doc["backend"]["settings"]["new_tokens"] == 4
    assert {b["name"] for b in doc["fingerprint"]["blocks"]} == {"model.layers.1", "model.layers.2"}  # layer 0 is never dropped
    assert 0 < doc["metrics"]["accuracy"] <= 1 and "proxy 1/(1+KL) (val)" in res.out


@pytest.fixture(scope="module")
def evaluator(decoder_dir, tmp_path_factory):
    from autoprune.app.experiment import build_evaluator, load_baseline
    from autoprune.config.loading import parse_config

    tmp = tmp_path_factory.mktemp("ev")
    cfg = parse_config(decoder_config(tmp, decoder_dir))
    return build_evaluator(cfg, load_baseline(cfg))


def test_the_kl_proxy_is_one_for_dense_and_one_over_one_plus_kl_for_a_pruned_candidate(evaluator):
    from autoprune.graph.policy import Policy

    assert evaluator.dense_accuracy == 1.0
    half = {u: 0.5 for u in evaluator.unit_names}
    m = evaluator.evaluate(Policy(half, ("model.layers.2",)))
    assert m.details["kl"] > 0 and m.accuracy == pytest.approx(1 / (1 + m.details["kl"]))
    assert m.macs_ratio == pytest.approx(evaluator.predicted_value(half, ("model.layers.2",)))  # MACs per token are exact
    assert m.latency_rounds >= 1 and m.latency_ci[0] <= m.latency_ratio <= m.latency_ci[1]


@pytest.mark.parametrize("searcher", ["uniform", "layer_drop", "random", "sensitivity", "ppo"])
def test_every_searcher_runs_on_a_decoder_unchanged(evaluator, searcher):
    from autoprune.search import get_searcher

    ev = evaluator.with_budget(evaluator.budget)
    res = get_searcher(searcher, progress=False).search(ev, 12 if searcher == "sensitivity" else 3, seed=0)  # one per unit and layer
    assert res.best is not None and not res.best.metrics.failed and res.episodes >= 1
    assert res.best.metrics.feasible and res.best.metrics.macs_ratio <= ev.target


def test_the_global_searcher_ranks_a_decoders_heads_and_channels_by_magnitude(evaluator):
    from autoprune.objective.decoder_evaluator import DecoderEvaluator
    from autoprune.search import get_searcher

    ev = DecoderEvaluator(evaluator.model, evaluator.data, budget=evaluator.budget, latency=evaluator.latency, importance="l2")
    scores = ev.graph.importance("l2")
    assert {n: len(v) for n, v in scores.items()} == {u.name: u.features.channels for u in ev.graph.units}
    res = get_searcher("global", progress=False).search(ev, 3, seed=0)
    assert res.best.metrics.feasible and 0 < res.extras["global_ratio"] < 1


# ------------------------------------------------------------------ run
@pytest.fixture(scope="module")
def finished(tmp_path_factory, decoder_dir):
    tmp = tmp_path_factory.mktemp("run")
    return tmp, write(tmp, decoder_config(tmp, decoder_dir, search={"episodes": 4}))


def test_run_through_the_cli_distils_reports_saves_a_reloadable_decoder_and_logs_mlflow_sections(finished, capsys):
    from mlflow import MlflowClient

    tmp, path = finished
    res = cli(capsys, "run", path)
    assert res.code == 0, res.err
    for shown in ("val kl", "test perplexity", "before -> after distillation", "prefill ms", "decode tokens/s", "dense:", "pruned:"):
        assert shown in res.out
    run_id = res.out.rsplit("MLflow run ", 1)[1].split(":")[0]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")
    metrics = client.get_run(run_id).data.metrics
    for section in ("dense/", "episode/", "search/", "finetune/", "final/"):
        assert any(k.startswith(section) for k in metrics), section
    for key in ("pruned_test_kl_before_distill", "pruned_test_kl_after_distill", "dense_test_perplexity", "pruned_decode_tokens_per_s",
                "dense_prefill_ms", "pruned_params"):
        assert f"final/{key}" in metrics, key
    assert metrics["final/pruned_params"] < metrics["final/dense_params"] and metrics["final/dense_test_kl"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["final/budget_met"] == 1.0
    folder = tmp / "out" / "model"
    reloaded = load_decoder(f"hf:{folder}").model
    assert sum(p.numel() for p in reloaded.parameters()) == metrics["final/pruned_params"]
    ids = torch.randint(0, reloaded.config.vocab_size, (1, 12))
    artifacts = {f.path for f in client.list_artifacts(run_id, "model")}
    assert {"model/model.safetensors", "model/config.json", "model/policy.json"} <= artifacts
    assert reloaded.generate(input_ids=ids, max_new_tokens=3, do_sample=False).shape == (1, 15)


def test_distillation_to_the_dense_logits_lowers_the_kl_of_a_pruned_tiny_decoder():
    from autoprune.graph.decoder import DecoderGraph
    from autoprune.graph.decoder_importance import magnitude_scores
    from autoprune.graph.decoder_surgery import prune_decoder
    from autoprune.graph.policy import Policy
    from autoprune.objective.lm_fidelity import NextTokenKL
    from autoprune.training.distill_decoder import distill_decoder
    from autoprune.training.finetune import FinetuneSettings
    from autoprune.zoo.lm_text import lm_corpus

    text = load_fortunes(limit=200)
    dec = tiny_decoder(text.train, vocab_size=256, layers=2, heads=4, kv_heads=2, hidden=32, mlp=64, seed=1)
    corpus = lm_corpus(text, dec.tokenizer, seq_len=32)
    graph = DecoderGraph(dec.model)
    pruned = prune_decoder(dec.model, graph.plan(Policy({u: 0.5 for u in graph.unit_names}), magnitude_scores(dec.model)))
    val = NextTokenKL(dec.model, corpus.val.subset(8))
    before, teacher = val.fidelity(pruned).kl, {k: v.clone() for k, v in dec.model.state_dict().items()}
    history = distill_decoder(pruned, dec.model, corpus.train, FinetuneSettings(steps=40, lr=5e-3, batch_size=8, optimizer="adamw",
                                                                             temperature=1.0, weight_decay=0.0), val=val, progress=False)
    assert history and history[-1]["val_kl"] == pytest.approx(val.fidelity(pruned).kl)
    assert val.fidelity(pruned).kl < 0.7 * before
    assert all(torch.equal(v, teacher[k]) for k, v in dec.model.state_dict().items())  # the teacher is never trained


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(("policy", "says"), [
    ({"ratios": {"model.layers.0.self_attn.kv_groups": 1.0}}, ("would remove every channel or head of 'model.layers.0.self_attn.kv_groups'",)),
    ({"ratios": {"model.layers.1.self_attn.query_heads": 1.0}},
     ("--warm-start:", "would remove every channel or head of 'model.layers.1.self_attn.query_heads'")),
    ({"ratios": {}, "drop": ["model.layers.0", "model.layers.1", "model.layers.2"]}, ("drops every layer",)),
])  # fmt: skip
def test_a_policy_that_removes_every_kv_group_every_head_of_a_group_or_every_layer_is_one_line_exit_2_and_writes_nothing(
        tmp_path, decoder_dir, capsys, policy, says):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(policy))
    res = cli(capsys, "search", write(tmp_path, decoder_config(tmp_path, decoder_dir)), "--warm-start", str(bad))
    assert_user_error(res, *says)
    assert not (tmp_path / "out").exists()


def test_a_sequence_longer_than_the_models_context_is_refused_in_one_line(tmp_path, decoder_dir, capsys):
    cfg = decoder_config(tmp_path, decoder_dir, data={"max_length": CONTEXT + 1})
    assert_user_error(cli(capsys, "search", write(tmp_path, cfg)), "data.max_length", str(CONTEXT + 1), f"({CONTEXT})")
    assert not (tmp_path / "out").exists()


def test_a_decoder_of_an_unknown_architecture_is_refused_naming_its_class(tmp_path, decoder_dir, capsys):
    folder = tmp_path / "qwen3"
    folder.mkdir()
    config = json.loads((decoder_dir / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3"}))
    cfg = decoder_config(tmp_path, folder)
    assert_user_error(cli(capsys, "search", write(tmp_path, cfg)), "Qwen3ForCausalLM", "LlamaForCausalLM")
    assert not (tmp_path / "out").exists()


def test_estimate_on_a_decoder_config_shows_rows_per_unit_kind_in_its_latency_mode(tmp_path, decoder_dir, capsys):
    res = cli(capsys, "estimate", write(tmp_path, decoder_config(tmp_path, decoder_dir, latency={"mode": "prefill"})), "--ratios", "0.5")
    assert res.code == 0, res.err
    for label in ("dense", "KV groups 50%", "MLP width 50%", "layers (lowest block", "prefill"):
        assert label in res.out
