"""BLEU against sacreBLEU: the 13a tokenizer, corpus and sentence scores, and bad input."""

import math

import pytest
import sacrebleu
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

from mlscratch.text.bleu import (
    BLEUScore,
    corpus_bleu,
    corpus_bleu_stats,
    ngram_counts,
    sentence_bleu,
    tokenize_13a,
)

TOL = 1e-9
SACRE_13A = Tokenizer13a()


def sacre(hypotheses, references):
    return sacrebleu.corpus_bleu(hypotheses, [references]).score


# Pieces that exercise every 13a rule: all ASCII punctuation, digits next to . , and -,
# the markup it undoes, unicode letters, CJK, emoji, and unusual whitespace.
PIECES = list("abcXYZ0189 .,-'\n\t\r!\"#$%&()*+/:;<=>?@[\\]^_`{|}~") + [
    "&quot;",
    "&amp;",
    "&lt;",
    "&gt;",
    "&amp;lt;",
    "&amp;quot;",
    "<skipped>",
    "-\n",
    "3.14",
    "1,000",
    "é",
    "Ü",
    "ß",
    "中",
    "東京",
    "😀",
    "\u00a0",
    "\u2028",
    "\u3000",
    "٣",
    "\x1c",
    "..",
    " - ",
]
lines = st.lists(st.sampled_from(PIECES), max_size=25).map("".join)


@settings(max_examples=1000, deadline=None)
@given(line=lines)
@example(line="")
@example(line="U.S.A. 1990-2000, 3.5% (approx.) don't &quot;x&quot;")
@example(line="a..b 1..5 ,5 5, .5 5. -5 5- a-b")
@example(line="end-\nof-line <skipped> &amp;lt;")
def test_tokenizer_matches_sacrebleu_13a(line):
    assert " ".join(tokenize_13a(line)) == SACRE_13A(line)


@settings(max_examples=300, deadline=None)
@given(line=st.text(max_size=40))
def test_tokenizer_matches_sacrebleu_13a_on_arbitrary_unicode(line):
    assert " ".join(tokenize_13a(line)) == SACRE_13A(line)


def test_tokenizer_examples_from_the_chapter():
    assert tokenize_13a("Hello, world! (It's 3.14, not 1,000.)") == [
        "Hello",
        ",",
        "world",
        "!",
        "(",
        "It's",
        "3.14",
        ",",
        "not",
        "1,000",
        ".",
        ")",
    ]
    assert tokenize_13a("state-of-the-art 1990-2000") == ["state-of-the-art", "1990", "-", "2000"]


def test_ngram_counts_counts_every_order():
    counts = ngram_counts(["a", "b", "a", "b"], max_order=3)
    assert counts[("a",)] == 2 and counts[("a", "b")] == 2 and counts[("b", "a")] == 1
    assert counts[("a", "b", "a")] == 1 and sum(counts.values()) == 4 + 3 + 2


# Sentences from a small vocabulary with punctuation, so that n-grams of every order
# overlap between hypotheses and references, and sometimes do not.
WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "sat",
    "on",
    "mat",
    "ran",
    ".",
    ",",
    "!",
    "3.5",
    "1,000",
    "x-ray",
    "(",
    ")",
    "café",
    "東京",
    "😀",
    "end-\n",
]
sentences = st.lists(st.sampled_from(WORDS), max_size=14).map(" ".join)


@st.composite
def corpora(draw):
    n = draw(st.integers(1, 8))
    references = draw(st.lists(sentences, min_size=n, max_size=n))
    # Hypotheses: fresh sentences, copies of their references, or edited copies.
    hypotheses = []
    for ref in references:
        kind = draw(st.sampled_from(["fresh", "copy", "edit"]))
        if kind == "fresh":
            hypotheses.append(draw(sentences))
        elif kind == "copy":
            hypotheses.append(ref)
        else:
            words = ref.split()
            cut = draw(st.integers(0, len(words)))
            hypotheses.append(
                " ".join(words[:cut] + draw(st.lists(st.sampled_from(WORDS), max_size=4)))
            )
    return hypotheses, references


@settings(max_examples=600, deadline=None)
@given(corpus=corpora())
def test_corpus_bleu_equals_sacrebleu_on_random_corpora(corpus):
    hypotheses, references = corpus
    assert abs(corpus_bleu(hypotheses, references) - sacre(hypotheses, references)) <= TOL


@settings(max_examples=500, deadline=None)
@given(hypothesis=sentences, reference=sentences)
def test_sentence_bleu_equals_sacrebleu_sentence_bleu(hypothesis, reference):
    expected = sacrebleu.sentence_bleu(hypothesis, [reference]).score
    assert abs(sentence_bleu(hypothesis, reference) - expected) <= TOL


@pytest.mark.parametrize(
    "hypotheses, references",
    [
        (["the cat sat on the mat"], ["the cat sat on the mat"]),  # identical
        (["a b c d e", "f g h i"], ["a b c d e", "f g h i"]),
        (["", ""], ["the cat", "sat"]),  # empty hypotheses
        (["the cat"], [""]),  # empty reference
        ([""], [""]),  # nothing at all
        (["x y z w v"], ["a b c d e"]),  # no overlap
        (["the cat"], ["the cat sat on the mat"]),  # too short for 3- and 4-grams
        (["the cat sat on the hat"], ["the cat sat on the mat"]),
        (["the the the the"], ["the dog chased the cat"]),  # clipping
        (["Hello, world!"], ["Hello world"]),
        (["It costs $1,000.50 (approx.)."], ["It costs $ 1,000.50, approximately."]),
        (["state-of-the-art 1990-2000 U.S.A."], ["state of the art 1990 - 2000 U.S.A ."]),
        (["Café naïve résumé 東京タワー 😀!"], ["Café naive résumé 東京 タワー 😀 !"]),
        (["&quot;quoted&quot; &amp; <tag>"], ['"quoted" & <tag>']),
        (["line one-\ntwo  "], ["line onetwo"]),
        (["the end-\n"], ["the end-"]),  # trailing whitespace goes before tokenizing
        (["a b c d e f g h"] * 3 + ["q"], ["a b c d e f g h"] * 4),
    ],
)
def test_corpus_bleu_equals_sacrebleu_on_edge_cases(hypotheses, references):
    ours = corpus_bleu(hypotheses, references)
    assert isinstance(ours, float)
    assert abs(ours - sacre(hypotheses, references)) <= TOL


def test_identical_corpus_scores_100_and_disjoint_corpus_scores_0():
    corpus = ["the cat sat on the mat .", "a dog , a cat and 3.5 birds !"]
    assert corpus_bleu(corpus, corpus) == pytest.approx(100, abs=TOL)
    assert corpus_bleu(["x y z w v"] * 2, corpus) == 0.0


def test_stats_are_the_papers_formula():
    hyps = ["the cat sat on the mat", "a dog ran"]
    refs = ["the cat sat on the red mat", "a dog ran away fast"]
    s = corpus_bleu_stats(hyps, refs)
    assert isinstance(s, BLEUScore)
    assert (s.hyp_len, s.ref_len) == (9, 12)
    assert s.matches == (9, 6, 4, 2) and s.totals == (9, 7, 5, 3)
    assert s.bp == pytest.approx(math.exp(1 - 12 / 9))
    geometric_mean = math.prod(m / t for m, t in zip(s.matches, s.totals, strict=True)) ** 0.25
    assert s.score == pytest.approx(100 * s.bp * geometric_mean, rel=1e-12)
    assert s.score == pytest.approx(sacre(hyps, refs), abs=TOL)


def test_exponential_smoothing_halves_each_missing_order():
    # 4 unigrams, 1 matching; no 2-, 3- or 4-gram matches.
    s = corpus_bleu_stats(["a x b y"], ["a b c d"])
    assert s.matches == (2, 0, 0, 0)
    assert s.precisions == (2 / 4, 1 / (2 * 3), 1 / (4 * 2), 1 / (8 * 1))


def test_the_tokenizer_changes_the_score():
    hyps, refs = ["The cat sat on the mat."], ["The cat sat on the mat ."]
    assert corpus_bleu(hyps, refs) == pytest.approx(100)
    assert corpus_bleu_stats(hyps, refs, tokenize=str.split).score < 80


@pytest.mark.parametrize(
    "hypotheses, references, error, message",
    [
        (["a"], ["a", "b"], ValueError, "1 hypotheses but 2 references"),
        ([], [], ValueError, "empty corpus"),
        ("a b", "a b", TypeError, "hypotheses must be a list of str, got str"),
        (["a"], "a", TypeError, "references must be a list of str, got str"),
        (["a", None], ["a", "b"], TypeError, r"hypotheses\[1\] must be a str, got NoneType"),
        (["a"], [["a"]], TypeError, r"references\[0\] must be a str, got list"),
        (("a" for _ in range(1)), ["a"], TypeError, "got generator"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(hypotheses, references, error, message):
    with pytest.raises(error, match=message):
        corpus_bleu(hypotheses, references)


def test_sentence_bleu_wants_strings():
    with pytest.raises(TypeError, match="two str"):
        sentence_bleu(["a"], ["a"])


def test_max_order_must_be_positive():
    with pytest.raises(ValueError, match="max_order"):
        corpus_bleu_stats(["a"], ["a"], max_order=0)
