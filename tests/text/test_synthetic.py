"""The synthetic language pair: determinism, exact alignments, real reordering, bad input."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlscratch.text.synthetic import (
    LEXICON,
    PLURAL_WORD,
    make_pairs,
    sample_sentence,
    split_pairs,
    translate,
)


def crossing(alignment):
    """Whether two links cross: i < i2 but j > j2 (an independent, quadratic check)."""
    return any(i < i2 and j > j2 for i, j in alignment for i2, j2 in alignment)


def test_make_pairs_is_deterministic_for_a_seed_and_differs_across_seeds():
    assert make_pairs(300, seed=5) == make_pairs(300, seed=5)
    assert make_pairs(300, seed=5) != make_pairs(300, seed=6)


def test_a_larger_request_extends_a_smaller_one():
    assert make_pairs(1000, seed=2)[:200] == make_pairs(200, seed=2)


def test_pairs_have_the_documented_format_and_distinct_sources():
    pairs = make_pairs(3000, seed=1, min_words=4, max_words=9)
    sources = [s for s, _ in pairs]
    assert len(set(sources)) == len(sources) == 3000
    lengths = {len(s.split()) for s in sources}
    assert lengths == set(range(4, 10))  # the whole range occurs, nothing outside it
    for source, target in pairs:
        for sentence in (source, target):
            assert sentence == sentence.lower() == " ".join(sentence.split())
        assert translate(source)[0] == target


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_alignment_links_each_target_word_to_one_source_word_via_the_lexicon(seed):
    words = sample_sentence(random.Random(seed))
    target, alignment = translate(" ".join(words))
    target_words = target.split()
    # Sorted by target index, one link per target word.
    assert [j for _, j in alignment] == list(range(len(target_words)))
    assert all(0 <= i < len(words) for i, _ in alignment)
    # Every source word is used, and the target words it gives, in target order, are
    # exactly its lexicon entry (a plural noun gives the noun and then the plural word).
    for i, word in enumerate(words):
        produced = [target_words[j] for i2, j in alignment if i2 == i]
        assert tuple(produced) == LEXICON[word].target
        linked = [j for i2, j in alignment if i2 == i]
        assert linked == list(range(linked[0], linked[0] + len(linked)))  # contiguous
    n_plural = sum(LEXICON[w].target[-1] == PLURAL_WORD for w in words)
    assert len(target_words) == len(words) + n_plural


def test_the_verb_is_always_last_and_the_target_is_reordered():
    pairs = make_pairs(2000, seed=3)
    non_monotonic = 0
    for source, _ in pairs:
        words = source.split()
        _, alignment = translate(source)
        last_source = alignment[-1][0]
        assert LEXICON[words[last_source]].pos in {"vt", "vi"}
        non_monotonic += crossing(alignment)
    assert non_monotonic / len(pairs) > 0.8


def test_only_bare_intransitive_sentences_keep_their_order():
    assert not crossing(translate("the dogs sleep")[1])
    assert translate("the dogs sleep")[0] == "lo wofa ri nemu"
    for source in [
        "the big dog sleeps",
        "the dog sees a cat",
        "the dog sleeps on the table",
        "the dog near the tree sleeps",
    ]:
        assert crossing(translate(source)[1]), source


def test_the_five_rules_on_worked_examples():
    assert translate("the big red dog sees a small cat")[0] == "lo wofa gora ruvo na miso piku mika"
    target, alignment = translate("the cat on the table saw two birds")
    assert target == "lo tavo ue lo miso du pipa ri mikata"
    assert alignment == [(3, 0), (4, 1), (2, 2), (0, 3), (1, 4), (6, 5), (7, 6), (7, 7), (5, 8)]
    # Nested phrases belong to what stands right before them.
    assert translate("a cat sleeps on the box near the tree")[0] == (
        "na miso lo kiru soba lo bako ue nemu"
    )
    assert translate("a cat on the box near the tree sleeps")[0] == (
        "lo kiru soba lo bako ue na miso nemu"
    )


def test_translate_accepts_more_than_the_sampler_draws():
    target, _ = translate("the big big dog sleeps")  # repeated adjectives
    assert target == "lo wofa gora gora nemu"
    deep = "the cat on the box on the table on the tree on the house sleeps"
    assert translate(deep)[0].split()[-1] == "nemu"


@pytest.mark.parametrize(
    "bad, message",
    [
        ("the dog sleeps happily", "'happily', is not in the source language"),
        ("The dog sleeps", "'The', is not in the source language"),
        ("the dogs sleeps", "does not agree with its subject"),
        ("a cats sleep", "'a' does not go with 'cats'"),
        ("these cat sleeps", "'these' does not go with 'cat'"),
        ("the dog sees", "expected a determiner at word 3, got the end of the sentence"),
        ("the dog sleeps the cat", "expected a preposition at word 3"),
        ("dog sleeps", "expected a determiner at word 0"),
        ("the big sleeps", "expected an adjective or a noun at word 2"),
        ("the dog the cat", "expected a verb at word 2"),
        ("the dog sees the cat the", "complete at word 5"),
        ("", "expected a determiner at word 0"),
    ],
)
def test_sentences_outside_the_language_are_refused_with_the_reason(bad, message):
    with pytest.raises(ValueError, match="source language|does not|expected|complete") as err:
        translate(bad)
    assert message in str(err.value)


def test_translate_wants_a_string():
    with pytest.raises(TypeError, match="must be a str"):
        translate(["the", "dog", "sleeps"])


def test_make_pairs_refuses_impossible_requests():
    with pytest.raises(ValueError, match="found only"):
        make_pairs(1, min_words=30, max_words=40)  # the sampler's longest sentence has 29 words
    with pytest.raises(ValueError, match="max_words >= 3"):
        make_pairs(10, max_words=2)
    with pytest.raises(ValueError, match="min_words <= max_words"):
        make_pairs(10, min_words=9, max_words=8)
    with pytest.raises(ValueError, match="non-negative int"):
        make_pairs(-1)
    assert make_pairs(0) == []


def test_split_pairs_partitions_deterministically():
    pairs = make_pairs(1001, seed=4)
    train, val, test = split_pairs(pairs, val=0.1, test=0.2, seed=9)
    assert (len(train), len(val), len(test)) == (701, 100, 200)
    assert sorted(train + val + test) == sorted(pairs)
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
    assert split_pairs(pairs, val=0.1, test=0.2, seed=9) == (train, val, test)
    assert split_pairs(pairs, val=0.1, test=0.2, seed=10) != (train, val, test)
    with pytest.raises(ValueError, match="val \\+ test < 1"):
        split_pairs(pairs, val=0.6, test=0.4)
    with pytest.raises(ValueError, match="empty"):
        split_pairs([])
