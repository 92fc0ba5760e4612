"""Part II layers against torch.nn's own layers with copied weights (float32, <= 1e-5)."""

import re
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mlscratch.torch_transformer import layers
from mlscratch.torch_transformer.layers import (
    Dropout,
    Embedding,
    FeedForward,
    LayerNorm,
    Linear,
    MultiHeadAttention,
    attention,
)

SETTINGS = settings(max_examples=15, deadline=None)


def rel_err(a, b):
    """max |a - b| / max(max |b|, 1): relative for values of size >= 1, absolute below.

    Float32 gradients that cancel to ~1e-3 (a query whose keys all look alike) carry
    rounding errors of the size of the terms that cancelled, not of the result.
    """
    return ((a - b).abs().max() / b.abs().max().clamp_min(1.0)).item()


def assert_close(ours, ref, tol=1e-5):
    assert rel_err(ours, ref) <= tol, rel_err(ours, ref)


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def key_padding(g, B, S):
    """(B, S) bool, True = real key; every row keeps at least its first key."""
    lengths = torch.randint(1, S + 1, (B,), generator=g)
    return torch.arange(S)[None, :] < lengths[:, None]


@SETTINGS
@given(
    st.integers(1, 3),
    st.integers(1, 5),
    st.integers(1, 6),
    st.integers(1, 6),
    st.integers(0, 10**6),
)
def test_linear_equals_nn_linear_with_its_gradients(B, T, d_in, d_out, seed):
    g = seeded(seed)
    ours = Linear(d_in, d_out, generator=g)
    ref = nn.Linear(d_in, d_out)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(B, T, d_in, generator=g)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    dy = torch.randn(B, T, d_out, generator=g)
    ours(x1).backward(dy)
    ref(x2).backward(dy)
    assert_close(x1.grad, x2.grad)
    for (name, p), (_, q) in zip(ours.named_parameters(), ref.named_parameters(), strict=True):
        assert_close(p.grad, q.grad), name


def test_embedding_is_scaled_row_lookup_like_nn_embedding():
    g = seeded(0)
    ours = Embedding(10, 6, generator=g)
    ref = nn.Embedding(10, 6)
    ref.load_state_dict(ours.state_dict())
    ids = torch.tensor([[1, 2, 2, 9], [0, 3, 1, 1]])
    dy = torch.randn(2, 4, 6, generator=g)
    ours(ids).backward(dy)
    (ref(ids) * 6**0.5).backward(dy)
    assert_close(ours(ids), ref(ids) * 6**0.5)
    assert_close(ours.weight.grad, ref.weight.grad)  # repeated ids accumulate


@SETTINGS
@given(st.integers(1, 3), st.integers(1, 5), st.integers(4, 16), st.integers(0, 10**6))
def test_layer_norm_equals_nn_layer_norm(B, T, d, seed):
    g = seeded(seed)
    ours = LayerNorm(d)
    ref = nn.LayerNorm(d)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(d, generator=g))
        ours.bias.copy_(torch.randn(d, generator=g))
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(B, T, d, generator=g) * 3 + 1
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    dy = torch.randn(B, T, d, generator=g)
    y1, y2 = ours(x1), ref(x2)
    y1.backward(dy)
    y2.backward(dy)
    assert_close(y1, y2)
    assert_close(x1.grad, x2.grad)  # (d = 2 would make dx pure rounding noise)
    assert_close(ours.weight.grad, ref.weight.grad)
    assert_close(ours.bias.grad, ref.bias.grad)


def test_feed_forward_equals_linear_relu_linear():
    g = seeded(3)
    ours = FeedForward(8, 20, generator=g)
    ref = nn.Sequential(nn.Linear(8, 20), nn.ReLU(), nn.Linear(20, 8))
    ref[0].load_state_dict(ours.w_1.state_dict())
    ref[2].load_state_dict(ours.w_2.state_dict())
    x = torch.randn(2, 5, 8, generator=g)
    assert_close(ours(x), ref(x))


def mha_reference(ours):
    """nn.MultiheadAttention with our projections copied in."""
    d, h = ours.d_model, ours.n_heads
    ref = nn.MultiheadAttention(d, h, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([ours.w_q.weight, ours.w_k.weight, ours.w_v.weight]))
        ref.in_proj_bias.copy_(torch.cat([ours.w_q.bias, ours.w_k.bias, ours.w_v.bias]))
        ref.out_proj.weight.copy_(ours.w_o.weight)
        ref.out_proj.bias.copy_(ours.w_o.bias)
    return ref


@SETTINGS
@given(
    st.integers(1, 3),
    st.integers(1, 6),
    st.integers(1, 6),
    st.sampled_from([1, 2, 4]),
    st.integers(1, 4),
    st.booleans(),
    st.integers(0, 10**6),
)
def test_multi_head_attention_equals_nn_multihead_attention(B, T, S, h, d_k, causal, seed):
    g = seeded(seed)
    d = h * d_k
    ours = MultiHeadAttention(d, h, generator=g)
    ref = mha_reference(ours)
    x_q = torch.randn(B, T, d, generator=g)
    x_kv = torch.randn(B, S, d, generator=g)
    keep = key_padding(g, B, S)  # (B, S), True = real key
    mask = keep[:, None, None, :]  # ours: True = may attend
    attn_mask = None
    if causal:  # with padding, query t sees keys s <= t; key 0 is never padding
        mask = mask & torch.ones(T, S, dtype=torch.bool).tril()
        attn_mask = ~torch.ones(T, S, dtype=torch.bool).tril()  # torch: True = blocked
    dy = torch.randn(B, T, d, generator=g)
    q1, kv1 = x_q.clone().requires_grad_(), x_kv.clone().requires_grad_()
    q2, kv2 = x_q.clone().requires_grad_(), x_kv.clone().requires_grad_()
    y1 = ours(q1, kv1, mask)
    y2, _ = ref(q2, kv2, kv2, key_padding_mask=~keep, attn_mask=attn_mask, need_weights=False)
    y1.backward(dy)
    y2.backward(dy)
    assert_close(y1, y2)
    assert_close(q1.grad, q2.grad)
    assert_close(kv1.grad, kv2.grad)
    d_in = torch.cat([ours.w_q.weight.grad, ours.w_k.weight.grad, ours.w_v.weight.grad])
    assert_close(d_in, ref.in_proj_weight.grad)
    assert_close(ours.w_o.weight.grad, ref.out_proj.weight.grad)


def test_fully_masked_rows_give_zeros_and_finite_gradients():
    g = seeded(0)
    q, k, v = (torch.randn(2, 3, 4, 5, generator=g, requires_grad=True) for _ in range(3))
    mask = torch.ones(2, 1, 4, 4, dtype=torch.bool)
    mask[0, :, 1, :] = False  # query 1 of the first example may attend nothing
    out, probs = attention(q, k, v, mask)
    assert torch.equal(out[0, :, 1], torch.zeros(3, 5))
    assert torch.equal(probs[0, :, 1], torch.zeros(3, 4))
    out.sum().backward()
    for x in (q, k, v):
        assert torch.isfinite(x.grad).all()
    assert torch.equal(q.grad[0, :, 1], torch.zeros(3, 5))


def test_dropout_is_inverted_seeded_and_off_in_eval():
    x = torch.ones(1000, 100)
    drop = Dropout(0.3, generator=seeded(5))
    y = drop(x)
    values = y.unique()
    assert len(values) == 2 and values[0] == 0
    assert values[1].item() == pytest.approx(1 / 0.7)
    assert abs((y == 0).float().mean().item() - 0.3) < 0.01
    assert torch.equal(y, Dropout(0.3, generator=seeded(5))(x))  # same seed, same mask
    drop.eval()
    assert drop(x) is x
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.0)


def test_positional_encoding_matches_part_one_table():
    import numpy as np

    from mlscratch.numpy_transformer.embeddings import sinusoidal_positions as np_table

    for d in (1, 6, 7):
        assert np.array_equal(
            layers.sinusoidal_positions(9, d, torch.float64).numpy(), np_table(9, d, np.float64)
        )


FORBIDDEN = [
    r"nn\.Linear",
    r"nn\.Embedding",
    r"nn\.LayerNorm",
    r"nn\.MultiheadAttention",
    r"nn\.Transformer",
    r"\bF\.",
    r"torch\.nn\.functional",
    r"nn\.functional",
    r"scaled_dot_product_attention",
    r"cross_entropy",
    r"nn\.Dropout",
    r"import functional",
]


def test_package_uses_no_torch_nn_layers():
    package = Path(layers.__file__).parent
    sources = sorted(package.glob("*.py"))
    assert len(sources) >= 3
    for path in sources:
        text = path.read_text()
        for pattern in FORBIDDEN:
            assert not re.search(pattern, text), f"{path.name} uses {pattern}"
