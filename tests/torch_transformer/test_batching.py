"""Chapter "Multi30k" (Part III), padded batches: every pair once per epoch within the
token budget, the order fixed by the seed, clear errors for impossible input."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mlscratch.torch_transformer.batching import make_batch, pad, token_batches

PAD, BOS, EOS = 0, 1, 2


def test_pad_and_make_batch():
    assert pad([[5], [6, 7, 8]], 0).tolist() == [[5, 0, 0], [6, 7, 8]]
    b = make_batch([([5, 6], [7]), ([8], [9, 10, 11])], PAD, BOS, EOS)
    assert b.src.tolist() == [[5, 6], [8, 0]]
    assert b.tgt_in.tolist() == [[BOS, 7, 0, 0], [BOS, 9, 10, 11]]
    assert b.tgt_out.tolist() == [[7, EOS, 0, 0], [9, 10, 11, EOS]]
    assert (b.n_tgt, b.n_src) == (6, 3) and b.src.dtype == torch.int64


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 60), st.integers(12, 80), st.integers(0, 10**6))
def test_token_batches_cover_every_pair_once_within_budget(random_pairs, n, budget, seed):
    pairs = random_pairs(n, seed)
    batches = token_batches(pairs, budget, PAD, BOS, EOS, seed=(seed, 1))
    seen = []
    for b in batches:
        B, S = b.src.shape
        T = b.tgt_in.shape[1]
        assert B * max(S, T) <= budget
        assert b.tgt_out.shape == b.tgt_in.shape
        assert torch.equal(b.tgt_in[:, 0], torch.full((B,), BOS))
        assert b.n_tgt == int((b.tgt_out != PAD).sum()) and b.n_src == int((b.src != PAD).sum())
        for i in range(B):
            src = [t for t in b.src[i].tolist() if t != PAD]
            out = [t for t in b.tgt_out[i].tolist() if t != PAD]
            assert out[-1] == EOS and b.tgt_in[i, 1 : len(out)].tolist() == out[:-1]
            seen.append((src, out[:-1]))
    assert sorted(seen) == sorted(pairs)


def test_token_batches_order_depends_on_the_seed_only(random_pairs):
    pairs = random_pairs(200)
    first = token_batches(pairs, 64, PAD, BOS, EOS, seed=(0, 0))
    again = token_batches(pairs, 64, PAD, BOS, EOS, seed=(0, 0))
    other = token_batches(pairs, 64, PAD, BOS, EOS, seed=(0, 1))
    assert all(torch.equal(a.src, b.src) for a, b in zip(first, again, strict=True))
    assert [b.src.shape for b in first] != [b.src.shape for b in other]
    unshuffled = token_batches(pairs, 64, PAD, BOS, EOS)
    widths = [max(b.src.shape[1], b.tgt_in.shape[1]) for b in unshuffled]
    assert widths == sorted(widths)


def test_token_batches_refuse_bad_input():
    with pytest.raises(ValueError, match="no pairs"):
        token_batches([], 10, PAD, BOS, EOS)
    with pytest.raises(ValueError, match="pair 1 has an empty source"):
        token_batches([([3], [4]), ([], [4])], 10, PAD, BOS, EOS)
    with pytest.raises(ValueError, match="pair 0 alone needs 6 tokens"):
        token_batches([([3], [4] * 5)], 5, PAD, BOS, EOS)
