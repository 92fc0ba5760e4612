"""The data pipeline: text in, token files out, random windows that a generator replays."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mlscratch.llm.data import (
    VAL_FRACTION,
    batch_at,
    get_batch,
    load_split,
    load_tokenizer,
    make_tokenizer,
    prepare_data,
    random_offsets,
    read_meta,
    read_text,
    token_dtype,
)
from mlscratch.llm.simple_tokenizers import ByteTokenizer, CharTokenizer
from mlscratch.llm.tokenizer import BPETokenizer
from mlscratch.text.corpus import default_corpus

TEXT = "Größe matters: the quick brown fox jumps over the lazy dog. 🙂\n" * 40


def test_read_text_reads_utf8_and_defaults_to_the_corpus(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text(TEXT, encoding="utf-8")
    assert read_text(path) == TEXT
    assert read_text(None) == default_corpus()


def test_read_text_rejects_missing_empty_and_non_utf8_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_text(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        read_text(tmp_path / "empty.txt")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9 au lait")
    with pytest.raises(ValueError, match="not UTF-8 text: invalid byte at offset 3"):
        read_text(tmp_path / "latin1.txt")


def test_make_tokenizer_builds_each_kind():
    assert isinstance(make_tokenizer("char", TEXT), CharTokenizer)
    assert isinstance(make_tokenizer("byte", TEXT), ByteTokenizer)
    bpe = make_tokenizer("bpe", TEXT, vocab_size=270)
    assert isinstance(bpe, BPETokenizer) and bpe.vocab_size == 270
    with pytest.raises(ValueError, match="needs vocab_size"):
        make_tokenizer("bpe", TEXT)
    with pytest.raises(ValueError, match="tokenizer must be one of"):
        make_tokenizer("words", TEXT)


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_prepare_data_stores_the_last_tenth_as_validation(tmp_path, kind):
    tok = make_tokenizer(kind, TEXT, vocab_size=300)
    meta = prepare_data(TEXT, tok, tmp_path)
    cut = int(len(TEXT) * (1 - VAL_FRACTION))
    expected = {"train": tok.encode(TEXT[:cut]), "val": tok.encode(TEXT[cut:])}
    for name, ids in expected.items():
        data = load_split(tmp_path / f"{name}.bin")
        assert isinstance(data, np.memmap) and data.dtype == np.uint16
        assert data.tolist() == ids
        assert (tmp_path / f"{name}.bin").stat().st_size == 2 * len(ids)
    assert (
        meta
        == read_meta(tmp_path)
        == {
            "dtype": "uint16",
            "vocab_size": tok.vocab_size,
            "train_tokens": len(expected["train"]),
            "val_tokens": len(expected["val"]),
        }
    )
    again = load_tokenizer(tmp_path)
    assert type(again) is type(tok) and again.vocab_size == tok.vocab_size
    assert again.encode(TEXT) == tok.encode(TEXT)
    assert not list(tmp_path.glob("*.tmp"))


class WideTokenizer:
    """A stand-in with a vocabulary larger than uint16 can hold."""

    vocab_size = 70_000

    def encode(self, text):
        return [69_999 - ord(c) for c in text]

    def to_dict(self):
        return {"kind": "wide"}


def test_token_files_widen_to_uint32_past_65536_tokens(tmp_path):
    assert token_dtype(65_536) == np.uint16 and token_dtype(65_537) == np.uint32
    prepare_data("abcdefghij" * 3, WideTokenizer(), tmp_path)
    train = load_split(tmp_path / "train.bin")
    assert train.dtype == np.uint32 and train[0] == 69_999 - ord("a")
    assert json.loads((tmp_path / "tokenizer.json").read_text()) == {"kind": "wide"}


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 300),
    block=st.integers(1, 40),
    batch=st.integers(1, 9),
    seed=st.integers(0, 2**31),
)
def test_get_batch_gives_windows_and_their_shift(n, block, batch, seed):
    data = (np.arange(n) * 7 % 65_536).astype(np.uint16)  # position i holds 7i
    generator = torch.Generator().manual_seed(seed)
    if n <= block:
        with pytest.raises(ValueError, match="shorter than one block"):
            get_batch(data, block, batch, generator)
        return
    x, y = get_batch(data, block, batch, generator)
    assert x.shape == y.shape == (batch, block) and x.dtype == y.dtype == torch.int64
    starts = x[:, 0] // 7
    assert ((starts >= 0) & (starts + block + 1 <= n)).all()
    window = starts[:, None] + torch.arange(block + 1)
    assert torch.equal(x, window[:, :-1] * 7) and torch.equal(y, window[:, 1:] * 7)


def test_batches_are_replayed_from_the_generator_state():
    data = np.arange(1000, dtype=np.uint16)
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    first = [get_batch(data, 16, 4, g) for _ in range(3)]
    g.set_state(state)
    again = [get_batch(data, 16, 4, g) for _ in range(3)]
    for (x1, y1), (x2, y2) in zip(first, again, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    other = get_batch(data, 16, 4, torch.Generator().manual_seed(4))[0]
    assert not torch.equal(other, first[0][0])


def test_batch_at_uses_the_given_offsets():
    data = np.arange(50, dtype=np.uint16)
    x, y = batch_at(data, torch.tensor([0, 10, 49 - 5]), 5)
    assert x.tolist() == [[0, 1, 2, 3, 4], [10, 11, 12, 13, 14], [44, 45, 46, 47, 48]]
    assert y.tolist() == [[1, 2, 3, 4, 5], [11, 12, 13, 14, 15], [45, 46, 47, 48, 49]]
    offsets = random_offsets(50, 5, (3, 2), torch.Generator().manual_seed(0))
    assert offsets.shape == (3, 2) and 0 <= offsets.min() and offsets.max() < 45
