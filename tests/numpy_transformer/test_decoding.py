"""Greedy decoding and beam search: beam 1 is greedy, beams are valid, a trained model decodes."""

import numpy as np
import pytest

from mlscratch.numpy_transformer.decoding import beam_search, greedy_decode, length_penalty
from mlscratch.numpy_transformer.layers import log_softmax
from mlscratch.numpy_transformer.model import Transformer, TransformerConfig
from mlscratch.numpy_transformer.training import fit

BOS, EOS = 1, 2


def random_model(seed=0, **kw):
    config = TransformerConfig(
        **{
            **dict(
                src_vocab_size=10,
                tgt_vocab_size=9,
                d_model=16,
                n_heads=2,
                d_ff=32,
                n_layers=2,
                dropout=0.1,
                max_len=12,
            ),
            **kw,
        }
    )
    return Transformer(config, seed=seed)


def sequence_logprob(model, src_row, ids):
    """log p(ids + <eos> | src) by teacher forcing, for checking beam scores."""
    tgt = np.array([[BOS, *ids]])
    logp = log_softmax(model.forward(src_row[None], tgt).astype(np.float64))[0]
    targets = [*ids, EOS]
    return sum(logp[t, y] for t, y in enumerate(targets))


@pytest.mark.parametrize("seed", range(4))
def test_beam_search_with_one_beam_is_greedy_decoding(seed):
    model = random_model(seed)
    src = np.random.default_rng(seed).integers(1, 10, (5, 6))
    src[1, 3:] = 0
    assert beam_search(model, src, BOS, EOS, beam_size=1) == greedy_decode(model, src, BOS, EOS)


def test_beam_search_finds_at_least_as_good_a_normalized_score_as_greedy():
    model = random_model(7)
    src = np.random.default_rng(1).integers(1, 10, (6, 5))
    greedy = greedy_decode(model, src, BOS, EOS, max_len=8)
    beams = beam_search(model, src, BOS, EOS, beam_size=4, max_len=8)
    for row, g, b in zip(src, greedy, beams, strict=True):
        assert len(b) <= 7 and all(0 <= t < 9 for t in b)
        if len(g) < 7 and len(b) < 7:  # both ended with <eos>: compare scores
            score_g = sequence_logprob(model, row, g) / length_penalty(len(g) + 1, 0.6)
            score_b = sequence_logprob(model, row, b) / length_penalty(len(b) + 1, 0.6)
            assert score_b >= score_g - 1e-9


def test_decoding_respects_the_length_limit_and_rejects_a_bad_beam():
    model = random_model(2)
    src = np.array([[3, 4, 5]])
    assert len(greedy_decode(model, src, BOS, EOS, max_len=4)[0]) <= 3
    assert len(beam_search(model, src, BOS, EOS, max_len=4)[0]) <= 3
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(model, src, BOS, EOS, beam_size=0)


def test_a_trained_model_reverses_unseen_sequences():
    rng = np.random.default_rng(0)

    def pairs(n):
        out = []
        for length in rng.integers(2, 6, n):
            seq = rng.integers(3, 9, length).tolist()
            out.append((seq, seq[::-1]))
        return out

    model = random_model(
        0,
        src_vocab_size=9,
        tgt_vocab_size=9,
        d_model=32,
        n_heads=4,
        d_ff=64,
        dropout=0.0,
        norm_first=True,
    )
    fit(
        model,
        pairs(2000),
        steps=600,
        batch_size=32,
        bos_id=BOS,
        eos_id=EOS,
        warmup=100,
        factor=0.5,
        smoothing=0.0,
        progress=False,
    )
    test = pairs(64)
    src = np.zeros((64, 5), np.int64)
    for i, (s, _) in enumerate(test):
        src[i, : len(s)] = s
    for decode in (greedy_decode, beam_search):
        out = decode(model, src, BOS, EOS)
        exact = np.mean([o == t for o, (_, t) in zip(out, test, strict=True)])
        assert exact >= 0.9, (decode.__name__, exact)
