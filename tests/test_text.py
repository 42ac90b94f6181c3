"""Specification of autoprune.zoo.text: Debian's fortunes quotations, split by hash and tokenised."""

from __future__ import annotations

import shutil

import pytest
import torch

from autoprune.errors import ConfigError, DataError
from autoprune.zoo import load_data, load_text_data
from autoprune.zoo.text import DEBIAN_FORTUNES, load_fortunes, parse_fortunes, split_of

needs_fortunes = pytest.mark.skipif(
    not (DEBIAN_FORTUNES / "fortunes").is_file(), reason="Debian package 'fortunes' not installed (scripts/setup.sh installs it)"
)


@needs_fortunes
def test_fortunes_corpus_is_real_english_split_about_80_10_10():
    corpus = load_text_data("fortunes")
    n = len(corpus.train) + len(corpus.val) + len(corpus.test)
    assert n > 10_000
    assert 0.07 < len(corpus.val) / n < 0.13 and 0.07 < len(corpus.test) / n < 0.13
    assert not set(corpus.train) & set(corpus.val) and not set(corpus.val) & set(corpus.test)
    assert all(q.isprintable() for q in corpus.train + corpus.val + corpus.test)
    words = " ".join(corpus.val).lower().split()
    assert words.count("the") > 0.02 * len(words)


@needs_fortunes
def test_adding_a_file_moves_no_quotation_to_another_split(tmp_path):
    two, three = tmp_path / "two", tmp_path / "three"
    two.mkdir(), three.mkdir()
    for name in ("goedel", "tao"):
        shutil.copy(DEBIAN_FORTUNES / name, two / name)
    for name in ("goedel", "tao", "magic"):
        shutil.copy(DEBIAN_FORTUNES / name, three / name)
    small, large = load_fortunes(data_dir=two), load_fortunes(data_dir=three)
    for split in ("train", "val", "test"):
        assert set(getattr(small, split)) <= set(getattr(large, split))
    assert len(large.train) > len(small.train)
    q = small.val[0]
    assert split_of(q, 0.1, 0.1) == "val"


def test_parser_drops_ascii_art_and_overstriking():
    text = "Real words\nare here.\n%\n  /\\_/\\\n ( o.o )\n  > ^ <\n%\n_\x08b_\x08o_\x08l_\x08d and ___\x08LAST\x07\n%\n"
    assert parse_fortunes(text) == ["Real words are here.", "bold and LAST"]


def test_missing_fortunes_names_the_debian_package(tmp_path):
    with pytest.raises(DataError, match=r"apt-get install -y fortunes"):
        load_fortunes(data_dir=tmp_path)


def test_text_data_set_given_to_the_image_loader_says_where_it_belongs():
    with pytest.raises(ConfigError, match=r"data.name: 'fortunes' is a text data set"):
        load_data("fortunes")


def test_bad_fractions_are_config_errors():
    with pytest.raises(ConfigError, match=r"data.val_fraction"):
        load_fortunes(val_fraction=1.5)
    with pytest.raises(ConfigError, match=r"leave no training text"):
        load_fortunes(val_fraction=0.6, test_fraction=0.5)


@needs_fortunes
def test_tokenised_splits_are_int64_and_batches_cut_shared_padding():
    pytest.importorskip("transformers", reason="needs the nlp extra: pip install 'autoprune[nlp]'")
    from autoprune.zoo.hf import tiny_encoder

    corpus = load_fortunes(limit=200)
    enc = tiny_encoder(corpus.train, vocab_size=2000)
    tok = corpus.tokenize(enc.tokenizer, max_length=64, max_positions=enc.max_positions)
    assert tok.val.input_ids.dtype == torch.int64 and tok.val.input_ids.shape == tok.val.attention_mask.shape
    assert tok.val.input_ids.shape[1] <= 64
    lengths = []
    for ids, mask in tok.val.batches(2):
        assert mask[:, -1].any()  # the last column is a token in some row: no all-padding column left
        lengths.append(ids.shape[1])
    assert min(lengths) < tok.val.input_ids.shape[1]
    by_length = list(tok.val.batches(16, by_length=True))
    assert sum(ids.numel() for ids, _ in by_length) < 0.7 * sum(ids.numel() for ids, _ in tok.val.batches(16))
    assert sum(len(ids) for ids, _ in by_length) == len(tok.val)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(by_length, tok.val.batches(16, by_length=True)))
    ids, mask = tok.example_input(3)
    assert ids.shape == mask.shape == (3, 64) and ids.dtype == mask.dtype == torch.int64


@needs_fortunes
def test_sequence_length_above_the_models_positions_is_refused():
    pytest.importorskip("transformers", reason="needs the nlp extra: pip install 'autoprune[nlp]'")
    from autoprune.zoo.hf import tiny_encoder

    corpus = load_fortunes(limit=50)
    enc = tiny_encoder(corpus.train, max_positions=64)
    with pytest.raises(ConfigError, match=r"data.max_length: 128 is above the model's maximum positions \(64\)"):
        corpus.tokenize(enc.tokenizer, max_length=128, max_positions=enc.max_positions)


def test_length_grouped_shuffled_batches_cover_every_sentence_once_with_little_padding():
    from autoprune.zoo.text import TokenSplit

    rng = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 40, (200,), generator=rng)
    mask = (torch.arange(40)[None, :] < lengths[:, None]).long()
    ids = torch.arange(200)[:, None] * mask  # each row's id in its tokens: which sentence a batch row is
    split = TokenSplit(ids, mask, tuple(str(i) for i in range(200)))
    seen, padding, firsts = [], 0, []
    for b_ids, b_mask in split.batches(16, shuffle=True, by_length=True, seed=1):
        seen += b_ids[:, 0].tolist()
        padding += int((b_mask == 0).sum())
        firsts.append(int(b_mask.sum(1).max()))
    assert sorted(seen) == list(range(200))
    plain = sum(int((m == 0).sum()) for _, m in split.batches(16, shuffle=True, seed=1))
    assert padding < plain / 3  # grouped by length
    assert firsts != sorted(firsts)  # but the batches come in random order
    again = [b[:, 0].tolist() for b, _ in split.batches(16, shuffle=True, by_length=True, seed=1)]
    other = [b[:, 0].tolist() for b, _ in split.batches(16, shuffle=True, by_length=True, seed=2)]
    assert [x for b in again for x in b] == seen and again != other
