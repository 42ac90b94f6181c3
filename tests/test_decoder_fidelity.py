"""Fidelity of a pruned decoder on real text: fortunes as blocks of tokens, KL from the dense next-token distribution, perplexity."""

import math

import pytest
import torch

from autoprune.errors import ConfigError
from autoprune.graph.decoder import DecoderGraph
from autoprune.graph.decoder_importance import magnitude_scores
from autoprune.graph.decoder_surgery import prune_decoder
from autoprune.graph.policy import Policy
from autoprune.objective.lm_fidelity import KLProxy, NextTokenKL, perplexity
from autoprune.objective.proxies import make_proxy
from autoprune.objective.proxy import ProxySettings
from autoprune.zoo.decoder import tiny_decoder
from autoprune.zoo.lm_text import lm_corpus
from autoprune.zoo.text import DEBIAN_FORTUNES, load_fortunes

pytestmark = pytest.mark.skipif(not (DEBIAN_FORTUNES / "fortunes").is_file(), reason="Debian package 'fortunes' not installed")


@pytest.fixture(scope="module")
def setup():
    text = load_fortunes(limit=150)
    dec = tiny_decoder(text.train, layers=2, max_positions=64)
    return dec, lm_corpus(text, dec.tokenizer, seq_len=32, max_positions=dec.max_positions, max_blocks=6)


def test_each_split_of_the_fortunes_becomes_blocks_of_contiguous_tokens_separated_by_eos(setup):
    dec, corpus = setup
    for split in (corpus.train, corpus.val, corpus.test):
        assert split.input_ids.shape == (6, 32) and split.input_ids.dtype == torch.int64
    stream = [t for q in load_fortunes(limit=150).train for t in dec.tokenizer(q, add_special_tokens=False).input_ids + [dec.tokenizer.eos_token_id]]
    assert corpus.train.input_ids.flatten().tolist() == stream[: 6 * 32]
    assert not torch.equal(corpus.val.input_ids, corpus.test.input_ids)


def test_a_block_longer_than_the_context_is_refused_in_one_line(setup):
    dec, _ = setup
    with pytest.raises(ConfigError, match=r"data.max_length: 128 is above the model's maximum positions \(64\)"):
        lm_corpus(load_fortunes(limit=20), dec.tokenizer, seq_len=128, max_positions=dec.max_positions)


def test_perplexity_is_the_exponential_of_the_causal_lm_loss(setup):
    dec, corpus = setup
    ids = corpus.test.input_ids
    with torch.no_grad():
        loss = dec.model(input_ids=ids, labels=ids).loss
    assert perplexity(dec.model, corpus.test) == pytest.approx(math.exp(float(loss)), rel=1e-4)
    # an untrained decoder predicts nearly uniformly: perplexity near the vocabulary size
    assert 0.8 * len(dec.tokenizer) < perplexity(dec.model, corpus.test) < 1.2 * len(dec.tokenizer)


def test_kl_is_zero_for_the_dense_model_and_grows_when_it_is_pruned(setup):
    dec, corpus = setup
    kl = NextTokenKL(dec.model, corpus.val)
    assert kl.fidelity(dec.model).kl == pytest.approx(0.0, abs=1e-6)
    graph = DecoderGraph(dec.model)
    pruned = prune_decoder(dec.model, graph.plan(Policy.uniform(graph.unit_names, 0.5), magnitude_scores(dec.model)))
    fid = kl.fidelity(pruned)
    with torch.no_grad():
        p = torch.log_softmax(dec.model(corpus.val.input_ids).logits, -1)
        q = torch.log_softmax(pruned(corpus.val.input_ids).logits, -1)
    expected = float(torch.nn.functional.kl_div(q, p, log_target=True, reduction="sum")) / corpus.val.tokens
    assert fid.kl == pytest.approx(expected, rel=1e-4) and fid.kl > 0
    assert fid.perplexity == pytest.approx(perplexity(pruned, corpus.val), rel=1e-4)


def test_the_proxy_for_a_decoder_is_exp_minus_kl_on_validation_blocks(setup):
    dec, corpus = setup
    proxy = make_proxy(dec.model, corpus)
    assert isinstance(proxy, KLProxy) and proxy.dense_score() == 1.0 and proxy.dense_output_finite()
    assert proxy.score(dec.model) == pytest.approx(1.0, abs=1e-6)
    graph = DecoderGraph(dec.model)
    pruned = prune_decoder(dec.model, graph.plan(Policy({}, ("model.layers.1",))))
    s = proxy.score(pruned)
    assert 0 < s < 1 and s == pytest.approx(1 / (1 + proxy.details["kl"])) and proxy.details["perplexity"] > 1
    with pytest.raises(ConfigError, match="proxy.metric: 'accuracy' does not fit a decoder's text; allowed: kl"):
        make_proxy(dec.model, corpus, ProxySettings(metric="accuracy"))
