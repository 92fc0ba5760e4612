"""Chapter 2's embeddings: finite differences, torch.nn.Embedding, the formula, bad input."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mlscratch.numpy_transformer.embeddings import (
    Embedding,
    PositionalEncoding,
    sinusoidal_positions,
)
from mlscratch.numpy_transformer.gradcheck import check_module, numerical_gradient, relative_error

TOL = 1e-6


def embedding_weight_error(emb, ids, seed):
    """Relative error of the weight gradient against central differences, L = sum(y * r)."""
    r = np.random.default_rng(seed).standard_normal((*ids.shape, emb.d_model))
    emb.zero_grad()
    emb.forward(ids)
    assert emb.backward(r) is None  # integer ids have no gradient
    numeric = numerical_gradient(lambda: float(np.sum(emb.forward(ids) * r)), emb.params["weight"])
    return relative_error(emb.dparams["weight"], numeric)


@settings(max_examples=15, deadline=None)
@given(
    shape=st.lists(st.integers(1, 4), min_size=0, max_size=3),
    vocab_size=st.integers(1, 6),
    d_model=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_embedding_weight_gradient_passes_finite_differences(shape, vocab_size, d_model, seed):
    rng = np.random.default_rng(seed)
    emb = Embedding(vocab_size, d_model, rng, dtype=np.float64)
    ids = rng.integers(0, vocab_size, shape)
    assert embedding_weight_error(emb, ids, seed) <= TOL


def test_repeated_ids_accumulate_their_gradients():
    emb = Embedding(5, 3, np.random.default_rng(0), dtype=np.float64)
    ids = np.array([[4, 1, 4], [4, 0, 1]])  # 4 three times, 1 twice, 2 and 3 never
    assert embedding_weight_error(emb, ids, seed=1) <= TOL
    emb.zero_grad()
    emb.forward(ids)
    emb.backward(np.ones((2, 3, 3)))
    counts = np.array([1, 2, 0, 0, 3])
    np.testing.assert_allclose(emb.dparams["weight"], math.sqrt(3) * counts[:, None] * np.ones(3))
    emb.forward(ids)  # a second backward pass adds to the first
    emb.backward(np.ones((2, 3, 3)))
    np.testing.assert_allclose(
        emb.dparams["weight"], 2 * math.sqrt(3) * counts[:, None] * np.ones(3)
    )


def test_embedding_is_a_scaled_one_hot_matrix_product():
    rng = np.random.default_rng(2)
    emb = Embedding(7, 4, rng, dtype=np.float64)
    ids = rng.integers(0, 7, (3, 5))
    one_hot = np.eye(7)[ids]  # (3, 5, 7)
    dy = rng.standard_normal((3, 5, 4))
    y = emb.forward(ids)
    emb.backward(dy)
    W = emb.params["weight"]
    np.testing.assert_allclose(y, one_hot @ W * 2.0, rtol=1e-14)
    dW = one_hot.reshape(-1, 7).T @ dy.reshape(-1, 4) * 2.0
    np.testing.assert_allclose(emb.dparams["weight"], dW, rtol=1e-12)


def test_embedding_equals_torch_nn_embedding_times_sqrt_d_model():
    rng = np.random.default_rng(3)
    vocab_size, d_model = 11, 16
    ours = Embedding(vocab_size, d_model, rng)
    ref = torch.nn.Embedding(vocab_size, d_model)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(ours.params["weight"]))
    ids = rng.integers(0, vocab_size, (4, 9))  # 36 lookups in 11 rows: repeats
    dy = rng.standard_normal((4, 9, d_model)).astype(np.float32)
    yt = ref(torch.from_numpy(ids)) * math.sqrt(d_model)
    yt.backward(torch.from_numpy(dy))
    y = ours.forward(ids)
    ours.backward(dy)
    assert y.dtype == np.float32 and ours.dparams["weight"].dtype == np.float32
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        ours.dparams["weight"], ref.weight.grad.numpy(), rtol=1e-5, atol=1e-5
    )


def test_embedding_initialization_gives_unit_variance_outputs():
    emb = Embedding(2000, 256, np.random.default_rng(4))
    assert abs(emb.params["weight"].std() - 256**-0.5) < 0.01 * 256**-0.5
    y = emb.forward(np.arange(2000))
    assert abs(y.std() - 1.0) < 0.01 and abs(y.mean()) < 0.01


def direct_positions(max_len, d_model):
    """The paper's formula evaluated entry by entry with the math module."""
    pe = np.zeros((max_len, d_model))
    for pos in range(max_len):
        for j in range(d_model):
            angle = pos / 10000 ** ((j - j % 2) / d_model)
            pe[pos, j] = math.sin(angle) if j % 2 == 0 else math.cos(angle)
    return pe


@settings(max_examples=20, deadline=None)
@given(max_len=st.integers(1, 60), d_model=st.integers(1, 17))
def test_sinusoidal_positions_equal_the_formula(max_len, d_model):
    expected = direct_positions(max_len, d_model)
    pe64 = sinusoidal_positions(max_len, d_model, np.float64)
    pe32 = sinusoidal_positions(max_len, d_model)
    assert pe64.shape == (max_len, d_model) and pe64.dtype == np.float64
    assert pe32.dtype == np.float32
    np.testing.assert_allclose(pe64, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(pe32, expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("d_model", [2, 8, 64, 9])
@pytest.mark.parametrize("k", [1, 5, 30])
def test_a_shift_by_k_is_a_rotation_of_each_pair(d_model, k):
    pe = sinusoidal_positions(120, d_model, np.float64)
    pairs = d_model // 2  # an odd d_model's last sine column has no partner
    phi = k * 10000.0 ** (-2 * np.arange(pairs) / d_model)
    s, c = pe[:, 0 : 2 * pairs : 2], pe[:, 1 : 2 * pairs : 2]  # (120, pairs)
    rotated_s = s[:-k] * np.cos(phi) + c[:-k] * np.sin(phi)
    rotated_c = c[:-k] * np.cos(phi) - s[:-k] * np.sin(phi)
    np.testing.assert_allclose(rotated_s, s[k:], atol=1e-12)
    np.testing.assert_allclose(rotated_c, c[k:], atol=1e-12)
    if d_model % 2 == 0:  # then the dot products depend only on the distance
        dots = pe @ pe.T
        np.testing.assert_allclose(np.diagonal(dots, k), dots[0, k], atol=1e-10)


@settings(max_examples=15, deadline=None)
@given(
    B=st.integers(1, 3),
    T=st.integers(1, 6),
    d_model=st.integers(1, 7),
    extra=st.integers(0, 3),
    seed=st.integers(0, 2**16),
)
def test_positional_encoding_adds_the_table_and_passes_finite_differences(
    B, T, d_model, extra, seed
):
    rng = np.random.default_rng(seed)
    layer = PositionalEncoding(d_model, max_len=T + extra, dropout=0.3, rng=rng).eval()
    x = rng.standard_normal((B, T, d_model))
    y = layer.forward(x)
    assert y.dtype == np.float64  # a float32 table does not lower a float64 input
    np.testing.assert_allclose(y, x + direct_positions(T, d_model), rtol=0, atol=1e-12)
    errors = check_module(layer, x, seed=seed)
    assert set(errors) == {"input 0"} and errors["input 0"] <= TOL


def test_positional_encoding_dropout_in_training_uses_one_mask_both_ways():
    layer = PositionalEncoding(8, max_len=10, dropout=0.5, rng=np.random.default_rng(5))
    x = np.random.default_rng(6).standard_normal((4, 10, 8)).astype(np.float32)
    y = layer.forward(x)
    dy = np.ones_like(x)
    dx = layer.backward(dy)
    dropped = y == 0
    assert 0.3 < dropped.mean() < 0.7
    np.testing.assert_array_equal(dx == 0, dropped)
    kept = ~dropped
    expected = 2 * (x + sinusoidal_positions(10, 8))  # survivors are scaled by 1 / (1 - p)
    np.testing.assert_allclose(y[kept], expected[kept], rtol=1e-6)
    np.testing.assert_array_equal(dx[kept], 2.0)
    assert layer.params == {} and list(layer.named_parameters()) == []


def test_dtypes_are_preserved():
    rng = np.random.default_rng(7)
    ids = rng.integers(0, 10, (2, 3))
    for dtype in (np.float32, np.float64):
        emb = Embedding(10, 4, rng, dtype=dtype)
        y = emb.forward(ids)
        emb.backward(np.ones_like(y))
        assert y.dtype == dtype and emb.dparams["weight"].dtype == dtype
        layer = PositionalEncoding(4, 5, dtype=np.float32)  # the table follows the input
        out = layer.forward(y)
        assert out.dtype == dtype and layer.backward(np.ones_like(out)).dtype == dtype
    assert sinusoidal_positions(3, 4, np.float64).dtype == np.float64


def test_the_float64_table_is_exact_even_when_built_as_float32():
    layer = PositionalEncoding(6, 50, dtype=np.float32)
    x = np.zeros((1, 50, 6))
    np.testing.assert_allclose(layer.forward(x)[0], direct_positions(50, 6), rtol=0, atol=1e-12)


def _emb():
    emb = Embedding(5, 3, np.random.default_rng(0))
    emb.forward(np.zeros((2, 4), dtype=np.int64))
    return emb


def _posenc():
    layer = PositionalEncoding(3, 4)
    layer.forward(np.zeros((2, 4, 3)))
    return layer


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: _emb().forward(np.array([[0, 5]])), ValueError, r"\[0, 5\), got 0\.\.5"),
        (lambda: _emb().forward(np.array([-2, 1])), ValueError, r"\[0, 5\), got -2\.\.1"),
        (lambda: _emb().forward(np.array([0.0, 1.0])), TypeError, "token ids"),
        (lambda: _emb().forward(np.array([True, False])), TypeError, "token ids"),
        (lambda: _emb().forward([0, 1]), TypeError, "numpy array"),
        (lambda: _emb().forward(np.zeros((2, 0), dtype=int)), ValueError, "empty batch"),
        (lambda: _emb().backward(np.ones((2, 4, 4))), ValueError, r"shape \(2, 4, 3\)"),
        (lambda: _emb().backward(np.ones((1, 4, 3))), ValueError, r"shape \(2, 4, 3\)"),
        (lambda: _emb().backward(np.ones((2, 4, 3), dtype=int)), TypeError, "dtype"),
        (lambda: Embedding(0, 3, np.random.default_rng(0)), ValueError, "positive"),
        (lambda: sinusoidal_positions(0, 4), ValueError, "positive"),
        (lambda: _posenc().forward(np.zeros((2, 5, 3))), ValueError, "max_len=4"),
        (lambda: _posenc().forward(np.zeros((2, 4, 2))), ValueError, "last dimension 3"),
        (lambda: _posenc().forward(np.zeros((4, 3))), ValueError, "3 dimensions"),
        (lambda: _posenc().forward(np.zeros((2, 4, 3), dtype=int)), TypeError, "dtype"),
        (lambda: _posenc().forward(np.zeros((0, 4, 3))), ValueError, "empty batch"),
        (lambda: _posenc().backward(np.zeros((1, 4, 3))), ValueError, r"shape \(2, 4, 3\)"),
        (lambda: PositionalEncoding(3, 4, dropout=1.0), ValueError, r"\[0, 1\)"),
    ],
)
def test_bad_input_gets_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()
