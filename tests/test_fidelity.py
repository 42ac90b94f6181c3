"""Specification of autoprune.objective.fidelity: label-free fidelity of a sentence encoder to the dense one."""

from __future__ import annotations

import copy

import pytest
import torch

from autoprune.errors import ConfigError, ModelError
from autoprune.objective.fidelity import embedding_fidelity, model_fidelity, sentence_embeddings
from autoprune.zoo.text import DEBIAN_FORTUNES, load_fortunes

pytest.importorskip("transformers", reason="needs the nlp extra: pip install 'autoprune[nlp]'")
pytestmark = pytest.mark.skipif(
    not (DEBIAN_FORTUNES / "fortunes").is_file(), reason="Debian package 'fortunes' not installed (scripts/setup.sh installs it)"
)

from autoprune.zoo.hf import tiny_bert, tiny_encoder  # noqa: E402


@pytest.fixture(scope="module")
def setting():
    """A tiny random BERT, its tokenizer, 200 real validation quotations and their dense embeddings."""
    corpus = load_fortunes(limit=400)
    enc = tiny_encoder(corpus.train, vocab_size=1000, seed=0)
    val = corpus.tokenize(enc.tokenizer, max_length=64).val.subset(200)
    return enc, val, sentence_embeddings(enc.model, val.batches(64))


def test_the_dense_model_has_fidelity_one(setting):
    enc, val, dense = setting
    fid = model_fidelity(enc.model, dense, val.batches(32))  # other batching, same sentences
    assert model_fidelity(enc.model, sentence_embeddings(enc.model, val.batches(64, by_length=True)), val.batches(16, by_length=True)).cosine > 0.99999
    assert fid.n == 200 and fid.k == 10
    assert fid.cosine == pytest.approx(1.0, abs=1e-5)
    assert fid.neighbour_agreement == pytest.approx(1.0)


def test_perturbed_weights_lower_fidelity_and_a_random_model_much_more(setting):
    enc, val, dense = setting
    noisy = copy.deepcopy(enc.model)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in noisy.parameters():  # 30% relative noise on every weight, embeddings included
            p.add_(0.3 * p.std() * torch.randn(p.shape, generator=g))
    random = tiny_bert(vocab_size=len(enc.tokenizer), seed=7)
    perturbed, unrelated = model_fidelity(noisy, dense, val.batches(64)), model_fidelity(random, dense, val.batches(64))
    assert perturbed.cosine < 0.999 and perturbed.neighbour_agreement < 0.95
    assert perturbed.cosine > 0.8 and perturbed.neighbour_agreement > 0.4
    assert unrelated.cosine < 0.5 and unrelated.neighbour_agreement < 0.25
    assert unrelated.cosine < perturbed.cosine - 0.3 and unrelated.neighbour_agreement < perturbed.neighbour_agreement - 0.2


def test_neighbour_agreement_ignores_a_rotation_that_cosine_sees():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 16, generator=g)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    fid = embedding_fidelity(x, x @ q)
    assert fid.neighbour_agreement == pytest.approx(1.0)
    assert fid.cosine < 0.5


def test_unrelated_embeddings_agree_at_chance_level():
    g = torch.Generator().manual_seed(0)
    fid = embedding_fidelity(torch.randn(500, 16, generator=g), torch.randn(500, 16, generator=g), k=10)
    assert fid.neighbour_agreement < 0.06  # chance: k / (n - 1) = 0.02
    assert abs(fid.cosine) < 0.05


def test_mismatched_embeddings_and_bad_k_are_refused():
    with pytest.raises(ModelError, match=r"do not match the reference's \(10, 8\)"):
        embedding_fidelity(torch.randn(10, 8), torch.randn(10, 6))
    with pytest.raises(ConfigError, match=r"proxy.neighbours: 10 is out of range for 10 sentences; allowed: 1..9"):
        embedding_fidelity(torch.randn(10, 8), torch.randn(10, 8), k=10)
