"""Part II decoding: the cached decoder equals the full one, greedy equals Part I's, beam
search equals Part I's NumPy beam search (float64), and one beam is greedy decoding."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mlscratch.numpy_transformer import decoding as numpy_decoding
from mlscratch.numpy_transformer.model import Transformer as NumpyTransformer
from mlscratch.text.multi30k import decode_ids, special_ids, train_joint_bpe
from mlscratch.torch_transformer import Transformer, TransformerConfig
from mlscratch.torch_transformer.decoding import (
    DecoderState,
    beam_search,
    greedy_decode,
    sequence_log_probs,
    translate,
)
from mlscratch.torch_transformer.model import numpy_state_dict

PAD, BOS, EOS = 0, 1, 2


def model_and_source(seed, norm_first=False, n_layers=2, B=5, S=7, V=11, dtype=torch.float64):
    config = TransformerConfig(
        src_vocab_size=13,
        tgt_vocab_size=V,
        d_model=16,
        n_heads=4,
        d_ff=32,
        n_layers=n_layers,
        dropout=0.1,
        max_len=40,
        norm_first=norm_first,
    )
    model = Transformer(config, seed=seed, dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(1, 13, (B, S), generator=g)
    lengths = torch.randint(1, S + 1, (B,), generator=g)
    src[torch.arange(S)[None, :] >= lengths[:, None]] = PAD  # padded sources
    return model, src


def numpy_twin(model):
    reference = NumpyTransformer(model.config)
    reference.load_state_dict(numpy_state_dict(model))
    reference.eval()
    return reference


@pytest.mark.parametrize("norm_first", [False, True])
def test_cached_steps_equal_the_full_decoder(norm_first):
    model, src = model_and_source(0, norm_first)
    model.eval()
    g = torch.Generator().manual_seed(1)
    tgt = torch.randint(3, 11, (src.shape[0], 9), generator=g)
    tgt[:, 0] = BOS
    tgt[0, 5:] = PAD  # a finished sentence keeps receiving padding
    with torch.no_grad():
        memory, src_mask = model.encode(src)
        full = model.decode(tgt, memory, src_mask)  # (B, T, V)
        state = DecoderState(model, memory, src_mask)
        steps = torch.stack([state.step(tgt[:, t]) for t in range(tgt.shape[1])], dim=1)
    torch.testing.assert_close(steps, full, rtol=1e-10, atol=1e-10)


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 10**6), st.booleans(), st.integers(1, 3))
def test_greedy_equals_part_one(seed, norm_first, n_layers):
    model, src = model_and_source(seed, norm_first, n_layers)
    ours = greedy_decode(model, src, BOS, EOS, max_len=15)
    assert ours == numpy_decoding.greedy_decode(numpy_twin(model), src.numpy(), BOS, EOS, 15)
    assert all(len(y) <= 14 and EOS not in y and PAD not in y for y in ours)


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 10**6), st.booleans(), st.integers(2, 5), st.floats(0, 1.5))
def test_beam_search_equals_part_one(seed, norm_first, beam_size, alpha):
    model, src = model_and_source(seed, norm_first)
    ours = beam_search(model, src, BOS, EOS, beam_size, alpha, max_len=12)
    theirs = numpy_decoding.beam_search(
        numpy_twin(model), src.numpy(), BOS, EOS, beam_size, alpha, max_len=12
    )
    assert ours == theirs


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 10**6), st.booleans())
def test_one_beam_is_greedy_decoding(seed, norm_first):
    model, src = model_and_source(seed, norm_first, dtype=torch.float32)
    assert beam_search(model, src, BOS, EOS, beam_size=1, max_len=20) == greedy_decode(
        model, src, BOS, EOS, max_len=20
    )


def search_scores(model, src, outputs, limit, alpha):
    """The length-normalized score that beam search ranks by: log p(y </s> | x) for an
    output that ended, log p(y | x) for one cut off at the length limit (no </s>)."""
    tgt_in = torch.full((len(outputs), limit), PAD)
    tgt_out = torch.full((len(outputs), limit), PAD)
    lengths = []
    for i, y in enumerate(outputs):
        ended = len(y) < limit - 1
        target = y + [EOS] if ended else y
        tgt_in[i, : len(target)] = torch.tensor([BOS, *target[:-1]])
        tgt_out[i, : len(target)] = torch.tensor(target)
        lengths.append(len(target))
    with torch.no_grad():
        logp = torch.log_softmax(model(src, tgt_in).double(), dim=-1)
    token = torch.where(tgt_out != PAD, logp.gather(-1, tgt_out[..., None])[..., 0], 0.0)
    lp = ((5 + torch.tensor(lengths, dtype=torch.float64)) / 6) ** alpha
    return token.sum(dim=1) / lp


def test_beam_search_finds_better_scores_than_greedy():
    """Beam search is not guaranteed to beat greedy on every sentence (the greedy prefix
    can be pruned), so this checks the aggregate over many random models: the beam's
    length-normalized score is at least greedy's for nearly all sentences, and on average."""
    better_or_equal, total, gain = 0, 0, 0.0
    for seed in range(8):
        model, src = model_and_source(seed, norm_first=seed % 2 == 1, B=8)
        greedy = greedy_decode(model, src, BOS, EOS, max_len=12)
        beam = beam_search(model, src, BOS, EOS, beam_size=4, alpha=0.6, max_len=12)
        s_beam = search_scores(model, src, beam, 12, 0.6)
        s_greedy = search_scores(model, src, greedy, 12, 0.6)
        better_or_equal += int((s_beam >= s_greedy - 1e-9).sum())
        total += len(beam)
        gain += float((s_beam - s_greedy).sum())
    assert better_or_equal >= 0.9 * total and gain > 0


def test_sequence_log_probs_match_the_decoding_steps():
    model, src = model_and_source(3)
    greedy = greedy_decode(model, src, BOS, EOS, max_len=30)
    with torch.no_grad():
        memory, src_mask = model.encode(src)
        state = DecoderState(model, memory, src_mask)
        total = torch.zeros(src.shape[0], dtype=torch.float64)
        token = torch.full((src.shape[0],), BOS)
        T = max(len(y) for y in greedy) + 1
        for t in range(T):
            logp = torch.log_softmax(state.step(token), dim=-1)
            nxt = torch.tensor([(y + [EOS])[t] if t <= len(y) else PAD for y in greedy])
            live = torch.tensor([t <= len(y) for y in greedy])
            total += torch.where(live, logp.gather(1, nxt[:, None])[:, 0], 0.0)
            token = nxt
    torch.testing.assert_close(sequence_log_probs(model, src, greedy, BOS, EOS), total)
    lengths = torch.tensor([len(y) + 1 for y in greedy], dtype=torch.float64)
    torch.testing.assert_close(
        sequence_log_probs(model, src, greedy, BOS, EOS, alpha=0.6),
        total / ((5 + lengths) / 6) ** 0.6,
    )


def test_length_limits():
    model, src = model_and_source(4, B=3, S=5)
    assert all(len(y) <= 3 for y in greedy_decode(model, src, BOS, EOS, max_len=4))
    assert all(len(y) <= 3 for y in beam_search(model, src, BOS, EOS, max_len=4))
    # the default limit is the source length + 50, within the model's max_len (40)
    assert all(len(y) <= 39 for y in greedy_decode(model, src, BOS, EOS))


def test_decoding_refuses_bad_input():
    model, src = model_and_source(5)
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(model, src, BOS, EOS, beam_size=0)
    with pytest.raises(ValueError, match=r"eos_id must be an id in \[0, 11\)"):
        greedy_decode(model, src, BOS, 11)
    with pytest.raises(ValueError, match="bos_id"):
        beam_search(model, src, -1, EOS)
    with pytest.raises(TypeError, match="integer dtype"):
        greedy_decode(model, src.double(), BOS, EOS)
    with pytest.raises(ValueError, match=r"shape \(B, L\)"):
        beam_search(model, src[0], BOS, EOS)
    with pytest.raises(ValueError, match=r"src ids must lie in \[0, 13\)"):
        greedy_decode(model, src + 13, BOS, EOS)
    with pytest.raises(ValueError, match="room for one token"):
        greedy_decode(model, src, BOS, EOS, max_len=1)
    with pytest.raises(ValueError, match="3 outputs for 5 sources"):
        sequence_log_probs(model, src, [[3], [4], [5]], BOS, EOS)


def test_translate_keeps_the_order_and_equals_one_by_one_decoding():
    pairs = [
        ("a dog runs", "ein hund rennt"),
        ("two cats sleep", "zwei katzen schlafen"),
        ("a red ball", "ein roter ball"),
        ("hi", "hallo"),
    ] * 5
    tokenizer = train_joint_bpe(pairs, vocab_size=300)
    pad_id, bos_id, eos_id = special_ids(tokenizer)
    V = tokenizer.vocab_size
    config = TransformerConfig(
        src_vocab_size=V,
        tgt_vocab_size=V,
        d_model=16,
        n_heads=2,
        d_ff=32,
        n_layers=1,
        dropout=0.0,
        max_len=64,
        pad_id=pad_id,
    )
    model = Transformer(config, seed=0, dtype=torch.float64)
    sentences = ["a red ball", "hi", "two cats sleep and a dog runs", "", "a dog"]
    for beam_size in (1, 3):
        batched = translate(
            model, tokenizer, sentences, bos_id, eos_id, beam_size=beam_size, batch_size=2, extra=5
        )
        assert len(batched) == len(sentences) and all(isinstance(s, str) for s in batched)
        for sentence, hyp in zip(sentences, batched, strict=True):
            src = torch.tensor([tokenizer.encode_ordinary(sentence) or [pad_id]])
            decode = greedy_decode if beam_size == 1 else beam_search
            kw = {} if beam_size == 1 else {"beam_size": beam_size}
            ids = decode(model, src, bos_id, eos_id, max_len=src.shape[1] + 5, **kw)[0]
            assert hyp == decode_ids(tokenizer, ids)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_cuda_decoding_matches_cpu():
    model, src = model_and_source(6)
    cpu = beam_search(model, src, BOS, EOS, beam_size=3, max_len=12)
    assert beam_search(model.cuda(), src.cuda(), BOS, EOS, beam_size=3, max_len=12) == cpu


def test_numpy_reference_is_float64():
    model, _ = model_and_source(7)
    assert all(a.dtype == np.float64 for a in numpy_state_dict(model).values())
