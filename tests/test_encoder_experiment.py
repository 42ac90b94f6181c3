"""A sentence encoder as a first-class experiment: `autoprune search` and `autoprune run` from one config.

A tiny randomly initialised BERT (2 layers, 4 heads, hidden 32, FFN 64) with a WordPiece
tokenizer trained on real fortunes quotations, saved as a local Hugging Face folder and named
``hf:/folder`` in the config, exactly as a user names any local encoder. The text is a small
real subset of Debian's fortunes (``data.limit``). The proxy is the label-free fidelity to the
dense embeddings; the budget is MACs (exact, so the test does not depend on the machine's load),
and ``run`` still exports ``model.onnx`` and checks it in ONNX Runtime.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_user_error, cli, merge, write_experiment

from autoprune.zoo.text import DEBIAN_FORTUNES, load_fortunes, tokenize_texts

pytest.importorskip("transformers", reason="needs the nlp extra: pip install 'autoprune[nlp]'")
pytest.importorskip("onnxruntime", reason="needs the onnx extra")
pytestmark = pytest.mark.skipif(
    not (DEBIAN_FORTUNES / "fortunes").is_file(), reason="Debian package 'fortunes' not installed (scripts/setup.sh installs it)"
)

from autoprune.zoo.hf import tiny_encoder  # noqa: E402

MAX_POSITIONS = 128


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> Path:
    """A tiny random BERT and its tokenizer saved as a local Hugging Face folder."""
    folder = tmp_path_factory.mktemp("tiny-encoder")
    enc = tiny_encoder(load_fortunes(limit=300).train, vocab_size=500, max_positions=MAX_POSITIONS)
    enc.model.encoder.save_pretrained(folder)
    enc.tokenizer.save_pretrained(folder)
    return folder


def encoder_config(tmp_path: Path, encoder_dir: Path, **over) -> dict:
    cfg = {
        "name": "tiny-encoder",
        "output_dir": str(tmp_path / "out"),
        "model": {"name": f"hf:{encoder_dir}"},
        "data": {"name": "fortunes", "max_length": 32, "limit": 120},
        "budget": {"metric": "macs", "target": 0.7},  # exact and fast on a busy machine; minilm.yaml times ONNX Runtime
        "latency": {"backend": "torch", "batch_size": 1, "threads": 1, "rounds": 3, "warmup": 1},
        "proxy": {"metric": "fidelity", "val_samples": 100},
        "pruning": {"importance": "taylor"},
        "search": {"searcher": "optuna", "episodes": 5},
        "finetune": {"epochs": 1, "lr": 1e-4, "optimizer": "adamw", "batch_size": 32},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"},
    }
    return merge(cfg, **over)


def write(tmp_path: Path, cfg: dict) -> str:
    return str(write_experiment(tmp_path / "exp.yaml", cfg))


# ------------------------------------------------------------------ search
@pytest.fixture(scope="module")
def searched(tmp_path_factory, encoder_dir):
    from autoprune.app.commands import search_command

    tmp = tmp_path_factory.mktemp("search")
    run = search_command(write(tmp, encoder_config(tmp, encoder_dir)), progress=False)
    return tmp, run


def test_search_on_an_encoder_config_finds_a_feasible_policy_over_heads_ffn_and_layers(searched):
    tmp, run = searched
    ev = run.evaluator
    kinds = {u.features.kind for u in ev.graph.units}
    assert kinds == {"heads", "ffn"} and len(ev.block_names) == 2  # 2 layers, each droppable
    doc = json.loads(run.policy_path.read_text())
    assert doc["metrics"]["feasible"] is True and doc["metrics"]["value"] <= ev.target
    assert set(doc["ratios"]) == set(ev.unit_names)
    assert run.result.episodes == 5


def test_the_encoder_proxy_is_fidelity_one_for_dense_and_records_cosine_and_neighbours(searched):
    _, run = searched
    ev = run.evaluator
    assert ev.dense_accuracy == pytest.approx(1.0)
    m = run.result.best.metrics
    assert set(m.details) == {"cosine", "neighbour_agreement"}
    assert m.accuracy == pytest.approx((m.details["cosine"] + m.details["neighbour_agreement"]) / 2)
    assert -0.5 <= m.accuracy <= 1.0 and m.as_dict()["proxy_cosine"] == m.details["cosine"]


def test_heads_and_ffn_units_get_their_own_kind_in_the_env_observation(searched):
    from autoprune.search.env import FEATURES, LayerPruningEnv

    _, run = searched
    env = LayerPruningEnv(run.evaluator)
    col = {f: FEATURES.index(f) for f in ("kind_heads", "kind_ffn", "kind_linear", "kind_conv", "is_block")}
    for (kind, name, _), row in zip(env.decisions, env._static):
        if kind == "block":
            assert row[col["is_block"]] == 1.0
            continue
        unit_kind = run.evaluator.graph.unit(name).features.kind
        assert row[col["kind_heads"]] == float(unit_kind == "heads")
        assert row[col["kind_ffn"]] == float(unit_kind == "ffn")
        assert row[col["kind_linear"]] == row[col["kind_conv"]] == 0.0


# ------------------------------------------------------------------ run
@pytest.fixture(scope="module")
def finished(tmp_path_factory, encoder_dir):
    from autoprune.app.pipeline import run_experiment
    from autoprune.config.loading import parse_config

    tmp = tmp_path_factory.mktemp("run")
    cfg = parse_config(encoder_config(tmp, encoder_dir, search={"episodes": 4}))
    return tmp, cfg, run_experiment(cfg, progress=False)


def test_run_reports_test_fidelity_of_dense_and_pruned_before_and_after_distillation(finished):
    _, _, res = finished
    r = res.report
    assert r["proxy_metric"] == "fidelity" and r["dense_test_fidelity"] == pytest.approx(1.0)
    for when in ("before_finetune", "after_finetune"):
        assert -0.5 <= r[f"pruned_test_fidelity_{when}"] <= 1.0
        assert r[f"pruned_test_fidelity_{when}"] == pytest.approx(
            (r[f"pruned_test_cosine_{when}"] + r[f"pruned_test_neighbour_agreement_{when}"]) / 2)
    assert r["pruned_test_fidelity"] == r["pruned_test_fidelity_after_finetune"] == res.pruned.test_accuracy
    assert res.pruned.params < res.dense.params


def test_run_exports_an_onnx_encoder_with_its_tokenizer_that_serves_sentences_alone(finished):
    import onnxruntime as ort
    from transformers import AutoTokenizer

    from autoprune.formats.pruned import load_pruned  # noqa: F401  (the .pt file is written too)

    tmp, cfg, res = finished
    out = Path(cfg.output_dir)
    assert (out / "model.onnx").is_file() and (out / "tokenizer.json").is_file() and (out / "model.pt").is_file()
    tok = AutoTokenizer.from_pretrained(str(out), local_files_only=True)  # the folder alone
    sentences = ["You will be successful in your work.", "Never trust a computer you cannot throw out a window."]
    ids, mask = tokenize_texts(tok, sentences, max_length=32, pad_to_max=True)
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask"]
    onnx_emb = sess.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    assert onnx_emb.shape == (2, 32)  # the embedding width is unchanged by pruning
    assert np.allclose(np.linalg.norm(onnx_emb, axis=1), 1.0, atol=1e-4)
    assert res.onnx["max_abs_diff"] < 1e-4


# ------------------------------------------------------------------ bad input
def test_an_encoder_with_an_image_data_set_is_one_line_exit_2(tmp_path, encoder_dir, capsys):
    res = cli(capsys, "search", write(tmp_path, encoder_config(tmp_path, encoder_dir, data={"name": "fashion_mnist", "limit": None})))
    assert_user_error(res)
    assert "data.name: 'fashion_mnist' is not text" in res.err and "'fortunes'" in res.err


def test_fidelity_proxy_on_a_cnn_is_one_line_exit_2(tmp_path, capsys):
    cfg = {"name": "cnn", "output_dir": str(tmp_path / "out"), "model": {"name": "mlp"}, "data": {"name": "digits"},
           "proxy": {"metric": "fidelity"}}
    res = cli(capsys, "search", write(tmp_path, cfg))
    assert_user_error(res)
    assert "proxy.metric: 'fidelity' needs a sentence encoder" in res.err and "'mlp'" in res.err


def test_text_data_with_a_cnn_is_one_line_exit_2(tmp_path, capsys):
    cfg = {"name": "cnn", "output_dir": str(tmp_path / "out"), "model": {"name": "resnet20"}, "data": {"name": "fortunes"}}
    res = cli(capsys, "run", write(tmp_path, cfg))
    assert_user_error(res)
    assert "model.name: 'resnet20' is not a sentence encoder" in res.err


def test_max_length_over_the_models_positions_is_one_line_exit_2_and_writes_nothing(tmp_path, encoder_dir, capsys):
    cfg = encoder_config(tmp_path, encoder_dir, data={"max_length": MAX_POSITIONS + 1})
    res = cli(capsys, "search", write(tmp_path, cfg))
    assert_user_error(res)
    assert f"data.max_length: {MAX_POSITIONS + 1} is above the model's maximum positions ({MAX_POSITIONS})" in res.err
    assert not (tmp_path / "out").exists()


def test_encoder_settings_that_only_fit_a_classifier_are_refused_by_name(tmp_path, encoder_dir, capsys):
    for over, culprit in (({"export": {"quantize": True}}, "export.quantize"),
                          ({"model": {"checkpoint": "x.pt"}}, "model.checkpoint"),
                          ({"proxy": {"metric": "accuracy"}}, "proxy.metric: 'accuracy' needs class labels")):
        res = cli(capsys, "search", write(tmp_path, encoder_config(tmp_path, encoder_dir, **over)))
        assert_user_error(res, culprit)
