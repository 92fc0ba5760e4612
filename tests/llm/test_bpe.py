"""BPE training (book/tokens/bpe.md): pre-tokenization, streaming, fast = naive, HF's merges."""

import itertools
import json
from collections import Counter

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from mlscratch.llm.bpe import (
    ASCII_PATTERNS,
    BYTE_ID,
    BYTE_ORDER,
    PATTERNS,
    PreTokenizer,
    build_vocab,
    count_words,
    merge_pair,
    train_merges,
    train_merges_naive,
)

# Characters that exercise every alternative of both patterns and their edges.
TRICKY = "aZs'lLvtdré1 \t\n\r\x0b\x0c\x1c!._-é世🙂\u0301\u00a0"


def to_gpt2_chars(token):
    """A token's bytes in GPT-2's printable alphabet, as HF `tokenizers` writes them."""
    return "".join(chr(b) if BYTE_ID[b] < 188 else chr(256 + BYTE_ID[b] - 188) for b in token)


def hf_train(text, vocab_size):
    """HF tokenizers' byte-level BPE trainer with GPT-2 pre-tokenization: (vocab, merges)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([text], trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [m if isinstance(m, list) else m.split(" ") for m in model["merges"]]
    return model["vocab"], merges


def test_byte_order_is_gpt2s_and_a_permutation():
    assert sorted(BYTE_ORDER) == list(range(256))
    assert [BYTE_ORDER[i] for i in BYTE_ID] == list(range(256))
    assert BYTE_ORDER[:3] == [ord("!"), ord('"'), ord("#")] and BYTE_ORDER[188] == 0
    from tokenizers import pre_tokenizers

    # HF numbers byte tokens by the code point of their printable stand-in: the same order.
    hf_order = sorted(pre_tokenizers.ByteLevel.alphabet())
    assert hf_order == [to_gpt2_chars(bytes([b])) for b in BYTE_ORDER]


def test_merge_pair_scans_left_to_right():
    assert merge_pair([1, 1, 1], 1, 1, 9) == [9, 1]
    assert merge_pair([1, 1, 1, 1], 1, 1, 9) == [9, 9]
    assert merge_pair([1, 2, 1, 2, 3], 1, 2, 9) == [9, 9, 3]
    assert merge_pair([2, 1], 1, 2, 9) == [2, 1]


@pytest.mark.parametrize("name", ["gpt2", "gpt4"])
def test_ascii_patterns_equal_unicode_patterns_exhaustively(name):
    slow, fast = regex.compile(PATTERNS[name]), regex.compile(ASCII_PATTERNS[name])
    ascii_chars = [chr(i) for i in range(128)]
    texts = [a + b for a in ascii_chars for b in ascii_chars]
    short = [c for c in TRICKY if c.isascii()]
    texts += ["".join(t) for t in itertools.product(short, repeat=3)]
    for text in texts:
        assert fast.findall(text) == slow.findall(text), repr(text)


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet=st.characters(max_codepoint=127), max_size=40),
    name=st.sampled_from(["gpt2", "gpt4"]),
)
def test_fast_path_equals_regex_on_random_ascii(text, name):
    assert PreTokenizer(name).findall(text) == regex.findall(PATTERNS[name], text)


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet=TRICKY, max_size=60),
    cuts=st.lists(st.integers(0, 60), max_size=6),
    name=st.sampled_from(["gpt2", "gpt4"]),
)
def test_streaming_pretokens_equal_those_of_the_joined_text(text, cuts, name):
    bounds = sorted({0, len(text), *(min(c, len(text)) for c in cuts)})
    chunks = [text[a:b] for a, b in itertools.pairwise(bounds)]
    streamed = [p for pieces in PreTokenizer(name).stream(chunks) for p in pieces]
    assert streamed == regex.findall(PATTERNS[name], text)


@settings(max_examples=150, deadline=None)
@given(
    parts=st.lists(
        st.sampled_from(["<|eot|>", "<|x|>", "ab c", " ", "\n", "<|", "|>", "x'"]), max_size=12
    ),
    cut_every=st.integers(1, 9),
)
def test_streaming_cuts_out_special_tokens_split_across_chunks(parts, cut_every):
    text = "".join(parts)
    chunks = [text[i : i + cut_every] for i in range(0, len(text), cut_every)]
    pre = PreTokenizer("gpt4", ["<|eot|>", "<|x|>"])
    streamed = [p for pieces in pre.stream(chunks) for p in pieces]
    expected = [
        p
        for seg in regex.split(r"<\|eot\|>|<\|x\|>", text)
        for p in regex.findall(PATTERNS["gpt4"], seg)
    ]
    assert streamed == expected


def test_split_of_long_mixed_text_equals_one_regex_pass():
    text = ("plain ASCII words, 12345 numbers\n" * 3000 + "naïve café 世界 🙂\r\n") * 3
    for name in ["gpt2", "gpt4"]:
        assert PreTokenizer(name).split(text) == regex.findall(PATTERNS[name], text)


@settings(max_examples=60, deadline=None)
@given(
    text=st.text(alphabet="ab c\nabé", max_size=120) | st.text(alphabet=TRICKY, max_size=80),
    n_merges=st.integers(0, 40),
    name=st.sampled_from(["gpt2", "gpt4"]),
)
def test_fast_training_learns_the_naive_trainers_merges_and_counts(text, n_merges, name):
    pieces = PreTokenizer(name).findall(text)
    naive = train_merges_naive(pieces, 256 + n_merges)
    fast = train_merges(Counter(pieces), 256 + n_merges)
    assert fast == naive
    merges, removed = fast
    assert all(r >= 1 for r in removed)
    # Replaying the merges in order leaves bytes - sum(removed) tokens.
    vocab = build_vocab(merges)
    ranks = {t: i for i, t in enumerate(vocab)}
    total = 0
    for piece in pieces:
        ids = [BYTE_ID[b] for b in piece.encode()]
        for a, b in merges:
            ids = merge_pair(ids, a, b, ranks[vocab[a] + vocab[b]])
        total += len(ids)
    assert total == len(text.encode()) - sum(removed)


def test_merges_that_spell_an_existing_token_reuse_its_id():
    a, b, c = BYTE_ID[ord("a")], BYTE_ID[ord("b")], BYTE_ID[ord("c")]
    vocab = build_vocab([(a, b), (b, c), (256, c), (a, 257)])
    assert vocab[256:] == [b"ab", b"bc", b"abc"]
    assert len(set(vocab)) == len(vocab)


@pytest.mark.parametrize("merges", [[(0, 256)], [(0,)], [(0, 1.0)], ["ab"], [(-1, 0)]])
def test_build_vocab_rejects_malformed_merges(merges):
    with pytest.raises(ValueError, match="merge 0"):
        build_vocab(merges)


def test_pretokenizer_rejects_bad_patterns():
    with pytest.raises(ValueError, match="not a valid regular expression"):
        PreTokenizer("(unclosed")
    with pytest.raises(ValueError, match="matches the empty string"):
        PreTokenizer(r"\w*")
    with pytest.raises(TypeError):
        PreTokenizer(None)


def test_merges_equal_hf_tokenizers_bpe_trainer_on_tiny_shakespeare(shared_data):
    text = shared_data("tinyshakespeare.txt").read_text(encoding="utf-8")
    table = count_words([text], PreTokenizer("gpt2"))
    merges, _ = train_merges(table, 4096)
    vocab = build_vocab(merges)
    hf_vocab, hf_merges = hf_train(text, 4096)
    ours = [[to_gpt2_chars(vocab[a]), to_gpt2_chars(vocab[b])] for a, b in merges]
    assert len(ours) == len(hf_merges) == 3840
    assert ours == hf_merges
    assert {to_gpt2_chars(t): i for i, t in enumerate(vocab)} == hf_vocab  # same ids, too


def test_merges_equal_hf_tokenizers_on_the_default_corpus_slice():
    from mlscratch.text.corpus import default_corpus

    text = default_corpus()[:300_000]
    merges, _ = train_merges(count_words([text], PreTokenizer("gpt2")), 1024)
    vocab = build_vocab(merges)
    _, hf_merges = hf_train(text, 1024)
    assert [[to_gpt2_chars(vocab[a]), to_gpt2_chars(vocab[b])] for a, b in merges] == hf_merges
