"""BPETokenizer (book/tokens/tokenizer.md): tiktoken's ids, exact round trips, files, bad input."""

import json
import random
import subprocess
import sys

import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from mlscratch.llm.bpe import BYTE_ID
from mlscratch.llm.tokenizer import BPETokenizer, read_chunks
from mlscratch.text.corpus import default_corpus

EOT = "<|endoftext|>"

# Pieces of text that stress pre-tokenization and byte-level merging.
FRAGMENTS = [
    "\r\n",
    "\n\n",
    "\r",
    "    ",
    "\t",
    " ",
    "  x",
    "'s",
    "'LL",
    "'ve",
    "e\u0301",
    "👩\u200d🚀",
    "🙂",
    "🇫🇷",
    "世界",
    "日本語",
    "Größe",
    "Ελληνικά",
    "123456",
    "٣٤",
    "the",
    " the",
    "x__init__",
    "\u00a0",
    "\u2028",
    "\u3000",
    "\x1c",
    "ſ",
    "\u212a",
    "!!!",
    "...",
    "<|",
    "|>",
    "<|end",
    "\x00",
    "\U0010ffff",
]
unicode_text = st.lists(
    st.one_of(
        st.text(max_size=6),
        st.sampled_from(FRAGMENTS),
        st.text(
            alphabet=st.characters(categories=["Mn", "Lo", "So", "Zs", "Nd", "Cc", "Po"]),
            max_size=6,
        ),
    ),
    max_size=14,
).map("".join)


def mixed_unicode_text():
    """A made-up multilingual corpus: the fragments above in a seeded random order."""
    rng = random.Random(0)
    words = FRAGMENTS + ["naïve", "café", "東京都", "한국어", "привет", "🙂🙂", " 🙂"]
    return "".join(rng.choice(words) + rng.choice(["", " ", "\n", EOT]) for _ in range(20_000))


CORPORA = {
    "default": lambda find: default_corpus(),
    "shakespeare": lambda find: find("tinyshakespeare.txt").read_text(encoding="utf-8"),
    "unicode": lambda find: mixed_unicode_text(),
}
SIZES = {"default": 1024, "shakespeare": 4096, "unicode": 600}
_trained = {}


def trained(corpus, pattern, find=None):
    """A tokenizer trained once per test session, with its corpus and tiktoken twin."""
    if (corpus, pattern) not in _trained:
        text = CORPORA[corpus](find)
        specials = [EOT, "<|pad|>"] if corpus == "unicode" else []
        tok = BPETokenizer.train(text, SIZES[corpus], pattern=pattern, special_tokens=specials)
        _trained[corpus, pattern] = tok, text, tok.to_tiktoken()
    return _trained[corpus, pattern]


ALL = [(c, p) for c in CORPORA for p in ["gpt2", "gpt4"]]


@pytest.mark.parametrize(("corpus", "pattern"), ALL)
def test_encode_equals_tiktoken_on_the_training_corpus(corpus, pattern, shared_data):
    tok, text, enc = trained(corpus, pattern, shared_data)
    assert tok.vocab_size == SIZES[corpus] == enc.n_vocab
    ids = tok.encode(text, allowed_special="all")
    assert ids == enc.encode(text, allowed_special="all")
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode("utf-8")) / 2  # it does compress


@pytest.mark.parametrize(("corpus", "pattern"), ALL)
@settings(max_examples=100, deadline=None)
@given(text=unicode_text)
def test_encode_equals_tiktoken_on_random_unicode(corpus, pattern, text, shared_data):
    tok, _, enc = trained(corpus, pattern, shared_data)
    assert tok.encode(text, disallowed_special=()) == enc.encode(text, disallowed_special=())
    assert tok.encode_ordinary(text) == enc.encode_ordinary(text)


@settings(max_examples=300, deadline=None)
@given(text=unicode_text | st.text())
def test_decode_inverts_encode_for_every_string(text):
    for pattern in ["gpt2", "gpt4"]:
        tok, _, _ = trained("unicode", pattern)
        assert tok.decode(tok.encode(text, disallowed_special=())) == text


def test_lone_surrogates_are_replaced_as_tiktoken_does():
    tok, _, enc = trained("unicode", "gpt4")
    for text in ["a\ud800b", "\udfff", "x \ud83d\ude42 y"]:
        assert tok.encode(text) == enc.encode(text)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_decode_equals_tiktoken_decode_on_arbitrary_ids(data):
    tok, _, enc = trained("unicode", "gpt2")
    ids = data.draw(st.lists(st.integers(0, tok.vocab_size - 1), max_size=12))
    assert tok.decode_bytes(ids) == enc.decode_bytes(ids)
    assert tok.decode(ids) == enc.decode(ids)  # invalid UTF-8 becomes U+FFFD in both


@settings(max_examples=100, deadline=None)
@given(parts=st.lists(st.sampled_from([EOT, "<|pad|>", "text ", "<|", "🙂", "\n"]), max_size=8))
def test_special_tokens_follow_tiktokens_policy(parts):
    tok, _, enc = trained("unicode", "gpt4")
    text = "".join(parts)
    for kwargs in [
        {"allowed_special": "all"},
        {"disallowed_special": ()},
        {"allowed_special": {EOT}, "disallowed_special": ()},
        {"allowed_special": {"<|pad|>"}},
        {},
    ]:
        try:
            expected = enc.encode(text, **kwargs)
        except ValueError:
            with pytest.raises(ValueError, match="special token"):
                tok.encode(text, **kwargs)
        else:
            assert tok.encode(text, **kwargs) == expected


def test_special_tokens_follow_the_merged_tokens_and_are_cut_out_of_training():
    tok = BPETokenizer.train(["ab ab ab<|e", "nd|>ab ab"], 256 + 2 + 1, special_tokens=["<|end|>"])
    assert tok.vocab[256:] == [b"ab", b" ab"] and tok.special_tokens == {"<|end|>": 258}
    assert all(b"<" not in t and b"|" not in t for t in tok.vocab[256:])
    assert tok.encode("<|end|>", allowed_special="all") == [258]
    assert tok.decode([258]) == "<|end|>"


def test_training_on_an_iterable_equals_training_on_the_joined_string():
    text = default_corpus()[:60_000]
    whole = BPETokenizer.train(text, 700, pattern="gpt2")
    lines = BPETokenizer.train(iter(text.splitlines(keepends=True)), 700, pattern="gpt2")
    blocks = BPETokenizer.train((text[i : i + 997] for i in range(0, len(text), 997)), 700, "gpt2")
    assert whole.merges == lines.merges == blocks.merges
    assert len(whole.merges) == 700 - 256


def test_save_and_load_round_trip(tmp_path):
    tok, text, _ = trained("unicode", "gpt4")
    path = tmp_path / "tok.json"
    tok.save(path)
    loaded = BPETokenizer.load(path)
    assert loaded.merges == tok.merges and loaded.vocab == tok.vocab
    assert loaded.special_tokens == tok.special_tokens and loaded.pattern == tok.pattern
    assert loaded.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")
    custom = BPETokenizer.train("one two three two one", 260, pattern=r"\w+|\s+|[^\w\s]+")
    custom.save(path)
    assert BPETokenizer.load(path).encode("two one") == custom.encode("two one")


def _rewrite(path, edit):
    body = json.loads(path.read_text())
    edit(body)
    path.write_text(json.dumps(body))


def _resign(body):
    from mlscratch.llm.tokenizer import _checksum

    body["sha256"] = _checksum(body)


def test_damaged_or_foreign_files_are_refused_with_a_clear_error(tmp_path):
    tok, _, _ = trained("unicode", "gpt2")
    path = tmp_path / "tok.json"
    tok.save(path)
    good = path.read_text()
    path.write_text(good[: len(good) // 2])
    with pytest.raises(ValueError, match="invalid JSON.*truncated"):
        BPETokenizer.load(path)
    path.write_text(good.replace("[[", "[[3, 4], [", 1))
    with pytest.raises(ValueError, match="checksum"):
        BPETokenizer.load(path)
    path.write_text(good)
    _rewrite(path, lambda b: b.update(version=2))
    with pytest.raises(ValueError, match="version 2, newer"):
        BPETokenizer.load(path)
    path.write_text(json.dumps({"model": {"type": "BPE"}}))
    with pytest.raises(ValueError, match="not an mlscratch BPE tokenizer"):
        BPETokenizer.load(path)
    path.write_text(good)
    _rewrite(path, lambda b: (b["merges"].append([0, 99999]), _resign(b)))
    with pytest.raises(ValueError, match="invalid: merge"):
        BPETokenizer.load(path)
    path.write_text(good)
    _rewrite(path, lambda b: (b.update(special_tokens=["<a>", "<a>"]), _resign(b)))
    with pytest.raises(ValueError, match="duplicate special tokens"):
        BPETokenizer.load(path)
    path.write_bytes(b"\xff\xfe{}")
    with pytest.raises(ValueError, match="not UTF-8"):
        BPETokenizer.load(path)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"vocab_size": 255}, ValueError, "at least 256"),
        ({"vocab_size": 257, "special_tokens": ["<a>", "<b>"]}, ValueError, "= 258, got 257"),
        ({"vocab_size": 300.0}, TypeError, "vocab_size must be an int"),
        ({"special_tokens": ["<a>", "<a>"]}, ValueError, "duplicate special tokens"),
        ({"special_tokens": [""]}, ValueError, "non-empty strings"),
        ({"special_tokens": [3]}, ValueError, "non-empty strings"),
        ({"special_tokens": ["\ud800"]}, ValueError, "not valid Unicode"),
        ({"special_tokens": "<|endoftext|>"}, TypeError, "list of strings"),
        ({"pattern": "(unclosed"}, ValueError, "not a valid regular expression"),
    ],
)
def test_bad_training_arguments_are_refused(kwargs, error, match):
    kwargs = {"vocab_size": 300, **kwargs}
    with pytest.raises(error, match=match):
        BPETokenizer.train("some text to learn from", **kwargs)


@pytest.mark.parametrize("data", ["", [], ["", ""], "<|e|><|e|>"])
def test_an_empty_corpus_is_refused(data):
    with pytest.raises(ValueError, match="corpus is empty"):
        BPETokenizer.train(data, 300, special_tokens=["<|e|>"])


def test_training_data_must_be_text():
    with pytest.raises(TypeError, match="decode the bytes"):
        BPETokenizer.train(b"bytes", 300)
    with pytest.raises(TypeError, match="item 1 of the training data is bytes"):
        BPETokenizer.train(["text", b"bytes"], 300)
    with pytest.raises(TypeError, match="string or an iterable of strings"):
        BPETokenizer.train(42, 300)


def test_a_corpus_too_small_for_the_vocabulary_warns_and_stops():
    with pytest.warns(UserWarning, match="only supports 258 tokens"):
        tok = BPETokenizer.train("ab ab", 1000)
    assert tok.vocab[256:] == [b"ab", b" ab"]


def test_decode_and_encode_refuse_bad_input():
    tok, _, _ = trained("unicode", "gpt2")
    for ids in [[0, tok.vocab_size], [-1], [5, 2**40]]:
        with pytest.raises(ValueError, match="outside the vocabulary"):
            tok.decode(ids)
    with pytest.raises(TypeError, match="must be integers"):
        tok.decode([1.5])
    with pytest.raises(TypeError, match="must be a str"):
        tok.encode(b"bytes")
    with pytest.raises(ValueError, match="unknown special tokens"):
        tok.encode("x", allowed_special={"<|nope|>"})
    with pytest.raises(ValueError, match=r"special token '<\|endoftext\|>' at position 2"):
        tok.encode(f"ab{EOT}")


def test_read_chunks_names_the_offset_of_the_first_bad_byte(tmp_path):
    path = tmp_path / "data.txt"
    good = "héllo wörld 🙂 " * 10
    data = good.encode("utf-8")
    path.write_bytes(data)
    for size in [1, 2, 3, 7, 1 << 20]:  # characters split across reads decode fine
        assert "".join(read_chunks(path, size)) == good
    bad = data[:41] + b"\xff" + data[41:]
    path.write_bytes(bad)
    for size in [1, 5, 40, 41, 42, 1 << 20]:
        with pytest.raises(ValueError, match="invalid byte at offset 41"):
            "".join(read_chunks(path, size))
    path.write_bytes(data[:-1] + "🙂".encode()[:2])  # truncated at the end of the file
    with pytest.raises(ValueError, match=f"offset {len(data) - 1}"):
        "".join(read_chunks(path, 16))


def test_tiktoken_is_not_imported_by_the_package(child_env):
    code = "import sys, mlscratch.llm.tokenizer; print('tiktoken' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=child_env
    )
    assert out.stdout.strip() == "False"


def test_a_tokenizer_with_a_merge_that_spells_an_existing_token_matches_tiktoken():
    a, b, c = BYTE_ID[ord("a")], BYTE_ID[ord("b")], BYTE_ID[ord("c")]
    tok = BPETokenizer([(a, b), (b, c), (256, c), (a, 257)], pattern="gpt2")
    assert tok.vocab_size == 259
    enc = tok.to_tiktoken()
    for text in ["abc", "aabcc abcabc", "bca cab"]:
        assert tok.encode(text) == enc.encode(text)


def test_bytes_order_makes_single_byte_ranks_equal_gpt2s():
    tok = BPETokenizer([], pattern="gpt2")
    assert tok.encode("!") == [0] and tok.encode("~") == [ord("~") - ord("!")]
    assert tiktoken.Encoding(
        "x", pat_str=tok.to_tiktoken()._pat_str, mergeable_ranks=tok.ranks, special_tokens={}
    ).encode(" ") == [220]
