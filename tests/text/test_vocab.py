"""Vocabularies: id order, round trips, unknown words, padding, and malformed input."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlscratch.text.vocab import SPECIALS, Vocab, encode_batch

words = st.text(alphabet="abcdéü中-", min_size=1, max_size=4)
sentences = st.lists(st.lists(words, max_size=8), min_size=1, max_size=6)


def test_specials_have_fixed_ids_and_words_are_ordered_by_frequency_then_alphabet():
    vocab = Vocab.build([["b", "a", "c"], ["c", "b"], ["c", "d"]])
    assert (vocab.pad_id, vocab.bos_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2, 3)
    assert vocab.itos == [*SPECIALS, "c", "b", "a", "d"]
    assert vocab.stoi == {token: i for i, token in enumerate(vocab.itos)}
    assert len(vocab) == 8 and "a" in vocab and "z" not in vocab


def test_build_does_not_depend_on_the_order_of_the_data():
    data = [["x", "y", "y"], ["z", "x"], ["w"]]
    assert Vocab.build(data) == Vocab.build(data[::-1]) == Vocab.build([s[::-1] for s in data])


def test_min_freq_leaves_rare_words_to_unk():
    vocab = Vocab.build([["a", "a", "b"]], min_freq=2)
    assert vocab.itos == [*SPECIALS, "a"]
    assert vocab.encode(["a", "b"]) == [4, vocab.unk_id]
    with pytest.raises(ValueError, match="min_freq"):
        Vocab.build([["a"]], min_freq=0)


def test_special_tokens_in_the_data_are_not_added_twice():
    vocab = Vocab.build([["<eos>", "a", "<unk>"]])
    assert vocab.itos == [*SPECIALS, "a"]


@settings(max_examples=50, deadline=None)
@given(data=sentences, add_bos=st.booleans(), add_eos=st.booleans())
def test_encode_then_decode_round_trips(data, add_bos, add_eos):
    vocab = Vocab.build(data)
    for tokens in data:
        ids = vocab.encode(tokens, add_bos=add_bos, add_eos=add_eos)
        assert len(ids) == len(tokens) + add_bos + add_eos
        assert ids[:add_bos] == [vocab.bos_id] * add_bos
        assert ids[len(ids) - add_eos :] == [vocab.eos_id] * add_eos
        assert vocab.decode(ids) == tokens
        assert vocab.decode(np.array(ids, dtype=np.int64)) == tokens
        raw = vocab.decode(ids, strip_specials=False)
        assert raw == ["<bos>"] * add_bos + tokens + ["<eos>"] * add_eos


def test_unknown_tokens_encode_to_unk_and_decode_as_unk():
    vocab = Vocab.build([["the", "cat"]])
    ids = vocab.encode(["the", "unicorn"])
    assert ids == [vocab.stoi["the"], vocab.unk_id]
    assert vocab.decode(ids) == ["the", "<unk>"]


def test_decode_stops_at_the_first_eos_and_drops_pad_and_bos():
    vocab = Vocab.build([["a", "b"]])
    a, b = vocab.stoi["a"], vocab.stoi["b"]
    ids = [vocab.bos_id, a, vocab.pad_id, b, vocab.eos_id, a, vocab.eos_id, vocab.pad_id]
    assert vocab.decode(ids) == ["a", "b"]
    assert vocab.decode(ids, strip_specials=False) == [vocab.itos[i] for i in ids]
    assert vocab.decode([]) == []


def test_decode_refuses_ids_outside_the_vocabulary_and_non_integers():
    vocab = Vocab.build([["a"]])
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        vocab.decode([4, 5])
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        vocab.decode([-1])
    with pytest.raises(TypeError, match="1-D sequence of ints"):
        vocab.decode([0.0, 1.0])
    with pytest.raises(TypeError, match="1-D sequence of ints"):
        vocab.decode(np.zeros((2, 2), dtype=np.int64))


def test_encode_refuses_a_string_or_non_string_tokens():
    vocab = Vocab.build([["a"]])
    with pytest.raises(TypeError, match=r"sentence\.split\(\)"):
        vocab.encode("a a")
    with pytest.raises(TypeError, match="only str"):
        vocab.encode(["a", 3])
    with pytest.raises(TypeError, match="token list"):
        Vocab.build(["a sentence"])


@settings(max_examples=50, deadline=None)
@given(data=sentences, add_bos=st.booleans(), add_eos=st.booleans())
def test_encode_batch_pads_to_the_longest_sentence(data, add_bos, add_eos):
    vocab = Vocab.build(data)
    batch = encode_batch(vocab, data, add_bos=add_bos, add_eos=add_eos)
    rows = [vocab.encode(tokens, add_bos, add_eos) for tokens in data]
    longest = max(len(row) for row in rows)
    assert batch.dtype == np.int64 and batch.shape == (len(data), longest)
    for row, ids in zip(batch, rows, strict=True):
        assert row[: len(ids)].tolist() == ids
        assert (row[len(ids) :] == vocab.pad_id).all()


def test_encode_batch_splits_strings_on_whitespace():
    vocab = Vocab.build([["a", "b", "c"]])
    batch = encode_batch(vocab, ["a b  c", "c"], add_eos=True)
    expected = [vocab.encode(["a", "b", "c"], add_eos=True), vocab.encode(["c", "<eos>"])]
    assert batch.tolist() == [expected[0], expected[1][:2] + [0, 0]]


def test_encode_batch_refuses_empty_batches_and_a_bare_string():
    vocab = Vocab.build([["a"]])
    with pytest.raises(ValueError, match="empty batch"):
        encode_batch(vocab, [])
    with pytest.raises(TypeError, match="must be a list"):
        encode_batch(vocab, "a a")


@settings(max_examples=30, deadline=None)
@given(data=sentences)
def test_to_dict_survives_json_and_from_dict_restores_the_vocabulary(data):
    vocab = Vocab.build(data)
    restored = Vocab.from_dict(json.loads(json.dumps(vocab.to_dict())))
    assert restored == vocab and restored.stoi == vocab.stoi


@pytest.mark.parametrize(
    "bad, error, message",
    [
        (["itos"], TypeError, "must be a dict"),
        ({"itos": list(SPECIALS)}, ValueError, "version-1 mlscratch.Vocab"),
        ({"format": "mlscratch.Vocab", "version": 2, "itos": []}, ValueError, "version=2"),
        ({"format": "mlscratch.Vocab", "version": 1}, ValueError, "no 'itos'"),
        ({"format": "mlscratch.Vocab", "version": 1, "itos": "abc"}, TypeError, "itos must be"),
        (
            {"format": "mlscratch.Vocab", "version": 1, "itos": ["a", *SPECIALS]},
            ValueError,
            "must start with",
        ),
        (
            {"format": "mlscratch.Vocab", "version": 1, "itos": [*SPECIALS, "a", "a"]},
            ValueError,
            "duplicate tokens: \\['a'\\]",
        ),
        (
            {"format": "mlscratch.Vocab", "version": 1, "itos": [*SPECIALS, 7]},
            TypeError,
            "only str",
        ),
    ],
)
def test_from_dict_refuses_malformed_data_with_a_clear_error(bad, error, message):
    with pytest.raises(error, match=message):
        Vocab.from_dict(bad)
