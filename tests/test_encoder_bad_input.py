"""Bad input around transformers, through the command line: one line naming the culprit, exit 2, nothing written.

The cases of the Transformers issue: a model whose attention heads the graph cannot split, a
missing text file or tokenizer, a sequence length above the model's positions (in
``test_encoder_experiment.py``), and a policy that removes every head of a layer without
dropping the layer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import assert_user_error, cli, write_experiment

pytest.importorskip("transformers", reason="needs the nlp extra: pip install 'autoprune[nlp]'")

from autoprune.zoo.hf import tiny_encoder
from autoprune.zoo.text import DEBIAN_FORTUNES, load_fortunes

needs_fortunes = pytest.mark.skipif(not (DEBIAN_FORTUNES / "fortunes").is_file(), reason="Debian package 'fortunes' not installed")


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> Path:
    if not (DEBIAN_FORTUNES / "fortunes").is_file():
        pytest.skip("Debian package 'fortunes' not installed")
    folder = tmp_path_factory.mktemp("tiny-encoder")
    enc = tiny_encoder(load_fortunes(limit=200).train, vocab_size=400, max_positions=64)
    enc.model.encoder.save_pretrained(folder)
    enc.tokenizer.save_pretrained(folder)
    return folder


def config(tmp_path: Path, model: str, **data) -> str:
    cfg = {"name": "bad", "output_dir": str(tmp_path / "out"), "model": {"name": model},
           "data": {"name": "fortunes", "max_length": 32, "limit": 100, **data}, "budget": {"metric": "macs", "target": 0.7},
           "proxy": {"metric": "fidelity", "val_samples": 50}, "search": {"searcher": "optuna", "episodes": 2},
           "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"}}
    return str(write_experiment(tmp_path / "exp.yaml", cfg))


def test_an_attention_whose_heads_cannot_be_split_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = cli(capsys, "check", "plugins_for_tests:FusedAttentionDigitsNet", "--data", "digits")
    err = assert_user_error(res)
    assert "attention attn (FusedQKVAttention, heads=4): autoprune cannot split its heads" in err
    assert listing(tmp_path) == []


@needs_fortunes
def test_a_missing_text_folder_names_the_field_and_the_debian_package(tmp_path, encoder_dir, capsys):
    res = cli(capsys, "search", config(tmp_path, f"hf:{encoder_dir}", data_dir=str(tmp_path / "no-text")))
    err = assert_user_error(res)
    assert "fortunes" in err and str(tmp_path / "no-text") in err
    assert listing(tmp_path) == ["exp.yaml"]


def test_an_encoder_folder_without_a_tokenizer_names_what_is_missing(tmp_path, encoder_dir, capsys):
    folder = tmp_path / "no-tokenizer"
    folder.mkdir()
    for f in encoder_dir.iterdir():
        if "token" not in f.name and f.name != "vocab.txt":
            (folder / f.name).write_bytes(f.read_bytes())
    res = cli(capsys, "search", config(tmp_path, f"hf:{folder}"))
    err = assert_user_error(res)
    assert "model.name" in err and "no tokenizer in" in err and "tokenizer.json" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_policy_removing_every_head_of_a_layer_names_the_layer_to_drop(tmp_path, encoder_dir, capsys):
    from autoprune.graph.prunable import PrunableGraph
    from autoprune.zoo.hf import load_encoder

    enc = load_encoder(f"hf:{encoder_dir}")
    ids = enc.tokenizer(["a b c"], return_tensors="pt")
    graph = PrunableGraph(enc.model, (ids["input_ids"], ids["attention_mask"]))
    heads = [u.name for u in graph.units if u.features.kind == "heads"]
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"ratios": {heads[0]: 1.0}, "drop": []}))
    out = tmp_path / "pruned.pt"
    res = cli(capsys, "apply", "--policy", str(policy), "--model", f"hf:{encoder_dir}", "--data", "fortunes", "--out", str(out),
                    "--no-track")
    err = assert_user_error(res)
    assert f"a ratio of 1.0 would remove every channel or head of '{heads[0]}'" in err and "under 'drop' instead" in err
    assert not out.exists()
