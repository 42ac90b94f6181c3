"""``autoprune estimate`` on a decoder LLM: rows per unit kind with KL, perplexity and paired latency; works with --model hf:/path alone."""

import copy
import logging

import pytest
from helpers.cli import assert_user_error, cli

from autoprune.app.decoder_estimate import estimate_decoder
from autoprune.zoo.decoder import tiny_decoder
from autoprune.zoo.lm_text import lm_corpus
from autoprune.zoo.text import DEBIAN_FORTUNES, load_fortunes

pytestmark = pytest.mark.skipif(not (DEBIAN_FORTUNES / "fortunes").is_file(), reason="Debian package 'fortunes' not installed")


@pytest.fixture(scope="module")
def decoder():
    return tiny_decoder(load_fortunes(limit=120).train, layers=4, max_positions=256)


def test_each_unit_kind_gets_a_row_with_its_sizes_kl_perplexity_and_speed(decoder):
    corpus = lm_corpus(load_fortunes(limit=120), decoder.tokenizer, seq_len=16, max_blocks=2)
    report = estimate_decoder(decoder, corpus, [0.5], mode="decode", prompt_tokens=8, new_tokens=2, rounds=2)
    rows = {r.kind: r for r in report.rows}
    assert [r.label for r in report.rows] == ["dense", "query heads per group 50%", "KV groups 50%", "MLP width 50%", "layers (lowest block influence) 50%"]
    assert rows["dense"].sizes == (6, 2, 64, 4) and rows["dense"].kl == pytest.approx(0.0, abs=1e-6)
    assert rows["query_heads"].sizes == (4, 2, 64, 4)  # 2 of 3 query heads kept in each KV group
    assert rows["kv_groups"].sizes == (3, 1, 64, 4)
    assert rows["mlp"].sizes == (6, 2, 32, 4) and rows["layers"].sizes[3] == 2
    for kind in ("query_heads", "kv_groups", "mlp", "layers"):
        assert rows[kind].params < rows["dense"].params and rows[kind].kl > 0 and rows[kind].perplexity > 1
    assert all(r.tokens_per_s > 0 and r.latency_ratio > 0 for r in report.rows)


@pytest.mark.slow  # about 10 s alone; timing at latency.threads 2 on a busy 2-core machine makes it up to 30 s
def test_estimate_with_only_a_decoder_folder_uses_the_fortunes_and_shows_every_kind(tmp_path, capsys, decoder):
    decoder.model.save_pretrained(tmp_path)
    decoder.tokenizer.save_pretrained(tmp_path)
    res = cli(capsys, "estimate", "--model", f"hf:{tmp_path}", "--ratios", "0.5", "--mode", "prefill")
    assert res.code == 0, res.err
    for label in ("dense", "query heads per group 50%", "KV groups 50%", "MLP width 50%", "layers (lowest block", "perplexity"):
        assert label in res.out


def test_mode_is_refused_for_a_model_that_is_not_a_decoder(capsys):
    assert_user_error(cli(capsys, "estimate", "--model", "resnet20", "--data", "digits", "--mode", "decode"), "--mode", "decoder LLMs only")


@pytest.mark.parametrize("flag", [["--set", "data.max_length=64"], ["--data", "digits"], ["--backend", "onnxruntime"], ["--batch-size", "4"]])
def test_a_flag_that_estimate_model_decoder_would_ignore_is_refused_naming_it(tmp_path, capsys, decoder, flag):
    decoder.model.save_pretrained(tmp_path)
    decoder.tokenizer.save_pretrained(tmp_path)
    res = cli(capsys, "estimate", "--model", f"hf:{tmp_path}", *flag)
    assert_user_error(res, f"{flag[0]}: does not apply to --model hf:{tmp_path} alone", "write a config with model.name")


def test_a_unit_that_fails_the_surgery_check_stays_dense_in_every_row(decoder, caplog):
    from test_decoder_safety import FlippedMLP

    corpus = lm_corpus(load_fortunes(limit=120), decoder.tokenizer, seq_len=16, max_blocks=2)
    flipped = copy.deepcopy(decoder)
    flipped.model.model.layers[0].mlp.__class__ = FlippedMLP
    with caplog.at_level(logging.WARNING, logger="autoprune.graph"):
        report = estimate_decoder(flipped, corpus, [0.5], mode="prefill", prompt_tokens=8, rounds=2)
    rows = {r.kind: r for r in report.rows}
    assert rows["mlp"].sizes == (6, 2, 64, 4)  # layer 0's MLP kept its width; the other layers' MLPs were cut
    assert rows["mlp"].params < rows["dense"].params
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING][0].startswith("decoder model.layers.0.mlp is not pruned")
