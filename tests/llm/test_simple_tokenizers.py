"""The baselines of book/tokens/bytes.md: character- and byte-level tokenizers."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlscratch.llm.simple_tokenizers import ByteTokenizer, CharTokenizer, tokenizer_from_dict


@given(text=st.text(min_size=1))
def test_char_tokenizer_round_trips_its_training_text(text):
    tok = CharTokenizer.train(text)
    assert tok.vocab_size == len(set(text))
    ids = tok.encode(text)
    assert len(ids) == len(text) and tok.decode(ids) == text
    assert tokenizer_from_dict(tok.to_dict()).chars == tok.chars


@given(text=st.text())
def test_byte_tokenizer_round_trips_every_string_as_its_utf8_bytes(text):
    tok = ByteTokenizer()
    assert tok.encode(text) == list(text.encode("utf-8"))
    assert tok.decode(tok.encode(text)) == text


def test_char_ids_are_in_sorted_order_like_nanogpt():
    tok = CharTokenizer.train("hello world")
    assert tok.chars == [" ", "d", "e", "h", "l", "o", "r", "w"]
    assert tok.encode("hold") == [3, 5, 4, 1]


def test_bad_input_gets_clear_errors():
    tok = CharTokenizer.train("abc")
    with pytest.raises(ValueError, match=r"'z' \(U\+007A\) at position 2"):
        tok.encode("abz")
    with pytest.raises(ValueError, match="token id 3 at position 1 is outside"):
        tok.decode([0, 3])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ByteTokenizer().decode([256])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ByteTokenizer().decode([-1])
    with pytest.raises(ValueError, match="empty text"):
        CharTokenizer.train("")
    with pytest.raises(ValueError, match="duplicates"):
        CharTokenizer(["a", "a"])
    with pytest.raises(ValueError, match="not a char or byte"):
        tokenizer_from_dict({"kind": "bpe"})


def test_invalid_utf8_decodes_to_replacement_characters():
    assert ByteTokenizer().decode([0xE2, 0x98]) == "\ufffd"
    assert ByteTokenizer().decode([0x61, 0xFF, 0x62]) == "a\ufffdb"
