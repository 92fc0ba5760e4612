"""Chapter 3's attention: finite differences in float64, torch.nn.MultiheadAttention, bad input."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mlscratch.numpy_transformer.attention import (
    MultiHeadAttention,
    attention_backward,
    attention_forward,
    causal_mask,
    masked_softmax,
    padding_mask,
)
from mlscratch.numpy_transformer.gradcheck import check_module, numerical_gradient, relative_error
from mlscratch.numpy_transformer.layers import Dropout, Linear, Module

TOL = 1e-6
TINY = 1e-3  # see assert_gradients_pass
PARAM_NAMES = [f"{w}.{p}" for w in ("w_q", "w_k", "w_v", "w_o") for p in ("weight", "bias")]


class SelfAttention(Module):
    """One input used as queries, keys and values; its gradient is the sum of both."""

    def __init__(self, mha):
        super().__init__()
        self.mha = mha

    def forward(self, x, mask=None):
        return self.mha.forward(x, x, mask)

    def backward(self, dy):
        dx_q, dx_kv = self.mha.backward(dy)
        return dx_q + dx_kv


def assert_gradients_pass(layer, *inputs, seed=0):
    """check_module's relative error is <= TOL for every input and parameter gradient.

    One refinement. The relative error of an array whose gradient is tiny next to the
    layer's largest gradient compares round-off with round-off (the finite difference of
    the loss carries an error near 1e-10 whatever the gradient's size), so it can exceed
    TOL for a correct backward pass. This happens by chance, mostly in one-element arrays
    (d_model = 1), and always for w_k.bias, whose gradient is exactly zero: a softmax
    ignores a constant added to a whole row. For an array below TINY times the layer's
    largest gradient we require instead an absolute error below TOL times that largest
    gradient. The analytic key-bias gradient must be zero up to round-off.
    """
    errors = check_module(layer, *inputs, seed=seed)
    y = layer.forward(*inputs)
    r = np.random.default_rng(seed).standard_normal(y.shape)  # check_module's r
    layer.zero_grad()
    dx = layer.backward(r)
    dx = dx if isinstance(dx, tuple) else (dx,)
    floats = [i for i, x in enumerate(inputs) if x.dtype.kind == "f"]
    arrays = {f"input {i}": (inputs[i], g) for i, g in zip(floats, dx, strict=True)}
    arrays.update({name: (p, g.copy()) for name, p, g in layer.named_parameters()})
    assert set(arrays) == set(errors)
    scale = max(np.abs(g).max() for _, g in arrays.values())
    key_bias = next(name for name in errors if name.endswith("w_k.bias"))
    assert np.abs(arrays[key_bias][1]).max() <= 1e-12 * scale

    def loss():
        return float(np.sum(layer.forward(*inputs) * r))

    for name, err in errors.items():
        x, analytic = arrays[name]
        if np.abs(analytic).max() >= TINY * scale:
            assert err <= TOL, (name, errors)
        else:
            numeric = numerical_gradient(loss, x)
            assert np.abs(numeric - analytic).max() <= TOL * scale, (name, errors)


def lengths_to_ids(lengths, S, rng):
    """Token ids (B, S) with pad id 0 after the first `lengths[b]` positions."""
    ids = rng.integers(1, 50, (len(lengths), S))
    ids[np.arange(S)[None, :] >= np.array(lengths)[:, None]] = 0
    return ids


# --- masks ---------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1, 2, 7])
def test_causal_mask_lets_query_t_see_keys_up_to_t(T):
    mask = causal_mask(T)
    assert mask.shape == (1, 1, T, T) and mask.dtype == bool
    t, s = np.arange(T)[:, None], np.arange(T)[None, :]
    np.testing.assert_array_equal(mask[0, 0], s <= t)


def test_padding_mask_is_true_for_real_keys_and_combines_with_causal():
    ids = np.array([[4, 5, 6, 0], [7, 0, 0, 0]])
    mask = padding_mask(ids, pad_id=0)
    assert mask.shape == (2, 1, 1, 4) and mask.dtype == bool
    np.testing.assert_array_equal(mask[:, 0, 0], ids != 0)
    both = mask & causal_mask(4)
    assert both.shape == (2, 1, 4, 4)
    np.testing.assert_array_equal(both[1, 0], [[1, 0, 0, 0]] * 4)
    assert padding_mask(np.array([[3, 3]], dtype=np.uint8), np.int64(3)).sum() == 0


@settings(max_examples=30, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 5), st.integers(1, 6)),
    seed=st.integers(0, 2**16),
)
def test_masked_softmax_is_a_softmax_over_the_allowed_keys_and_zero_for_empty_rows(shape, seed):
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal(shape) * 50  # large scores: stability matters
    mask = rng.random(shape) < 0.6
    probs = masked_softmax(scores, mask)
    for index in np.ndindex(shape[:-1]):
        allowed = mask[index]
        expected = np.zeros(shape[-1])
        if allowed.any():
            e = np.exp(scores[index][allowed] - scores[index][allowed].max())
            expected[allowed] = e / e.sum()
        np.testing.assert_allclose(probs[index], expected, rtol=1e-12, atol=1e-300)
    assert not np.isnan(probs).any()


# --- the core operation -----------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(
    B=st.integers(1, 2),
    h=st.integers(1, 3),
    T=st.integers(1, 4),
    S=st.integers(1, 4),
    d_k=st.integers(1, 3),
    d_v=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_attention_backward_matches_finite_differences(B, h, T, S, d_k, d_v, seed):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, h, T, d_k))
    k = rng.standard_normal((B, h, S, d_k))
    v = rng.standard_normal((B, h, S, d_v))
    mask = rng.random((B, 1, T, S)) < 0.7  # some rows may have no allowed key
    out, cache = attention_forward(q, k, v, mask)
    r = rng.standard_normal(out.shape)
    grads = attention_backward(r, cache)

    def loss():
        return float(np.sum(attention_forward(q, k, v, mask)[0] * r))

    for x, g in zip((q, k, v), grads, strict=True):
        assert g.shape == x.shape
        assert relative_error(g, numerical_gradient(loss, x)) <= TOL


def test_a_query_with_no_allowed_key_gives_zero_output_and_zero_gradients():
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 2, 3, 4)) for _ in range(3))
    mask = np.ones((2, 1, 3, 3), dtype=bool)
    mask[0, 0, 1] = False  # query 1 of example 0 may attend nothing
    mask[1] = False  # example 1 may attend nothing at all
    out, cache = attention_forward(q, k, v, mask)
    dq, dk, dv = attention_backward(np.ones_like(out), cache)
    assert np.isfinite(out).all() and all(np.isfinite(g).all() for g in (dq, dk, dv))
    assert not out[0, :, 1].any() and not out[1].any()
    assert not dq[0, :, 1].any() and not dq[1].any()
    assert not dk[1].any() and not dv[1].any()
    np.testing.assert_array_equal(cache.probs[0, :, 1], 0)
    assert out[0, :, [0, 2]].all()  # the other rows are untouched

    mha = MultiHeadAttention(8, 2, np.random.default_rng(1))
    x = rng.standard_normal((2, 3, 8)).astype(np.float32)
    y = mha.forward(x, x, padding_mask(np.array([[1, 2, 3], [0, 0, 0]]), pad_id=0))
    np.testing.assert_array_equal(y[1], np.broadcast_to(mha.w_o.params["bias"], (3, 8)))
    dx_q, dx_kv = mha.backward(np.ones_like(y))
    assert not dx_q[1].any() and not dx_kv[1].any()
    assert all(np.isfinite(g).all() for _, _, g in mha.named_parameters())


# --- multi-head attention: finite differences ------------------------------------------

SELF_MASKS = ["none", "causal", "padding", "causal & padding", "causal & left padding"]


@settings(max_examples=25, deadline=None)
@given(
    B=st.integers(1, 3),
    T=st.integers(1, 5),
    n_heads=st.integers(1, 4),
    d_k=st.integers(1, 3),
    kind=st.sampled_from(SELF_MASKS),
    seed=st.integers(0, 2**16),
)
def test_self_attention_passes_finite_differences(B, T, n_heads, d_k, kind, seed):
    rng = np.random.default_rng(seed)
    mha = MultiHeadAttention(n_heads * d_k, n_heads, rng, dtype=np.float64)
    x = rng.standard_normal((B, T, n_heads * d_k))
    ids = lengths_to_ids(rng.integers(0, T + 1, B), T, rng)  # length 0: all padding
    if kind == "causal & left padding":
        ids = ids[:, ::-1].copy()
    masks = {
        "none": None,
        "causal": causal_mask(T),
        "padding": padding_mask(ids, 0),
        "causal & padding": causal_mask(T) & padding_mask(ids, 0),
        "causal & left padding": causal_mask(T) & padding_mask(ids, 0),
    }
    inputs = (x,) if masks[kind] is None else (x, masks[kind])
    assert_gradients_pass(SelfAttention(mha), *inputs, seed=seed)


@settings(max_examples=25, deadline=None)
@given(
    B=st.integers(1, 3),
    T=st.integers(1, 5),
    S=st.integers(1, 5),
    n_heads=st.integers(1, 4),
    d_k=st.integers(1, 3),
    kind=st.sampled_from(["none", "padding", "per example", "per head", "full"]),
    seed=st.integers(0, 2**16),
)
def test_cross_attention_passes_finite_differences(B, T, S, n_heads, d_k, kind, seed):
    rng = np.random.default_rng(seed)
    d_model = n_heads * d_k
    mha = MultiHeadAttention(d_model, n_heads, rng, dtype=np.float64)
    x_q, x_kv = rng.standard_normal((B, T, d_model)), rng.standard_normal((B, S, d_model))
    shapes = {
        "per example": (B, 1, T, S),
        "per head": (1, n_heads, T, S),
        "full": (B, n_heads, T, S),
    }
    if kind == "none":
        inputs = (x_q, x_kv)
    elif kind == "padding":
        inputs = (x_q, x_kv, padding_mask(lengths_to_ids(rng.integers(0, S + 1, B), S, rng), 0))
    else:
        inputs = (x_q, x_kv, rng.random(shapes[kind]) < 0.6)
    assert_gradients_pass(mha, *inputs, seed=seed)


def test_a_fully_padded_source_passes_finite_differences():
    rng = np.random.default_rng(5)
    mha = MultiHeadAttention(6, 3, rng, dtype=np.float64)
    x_q, x_kv = rng.standard_normal((3, 4, 6)), rng.standard_normal((3, 2, 6))
    mask = padding_mask(np.array([[1, 2], [0, 0], [3, 0]]), pad_id=0)
    assert_gradients_pass(mha, x_q, x_kv, mask)
    assert not mha.attn[1].any()


def test_dropout_in_eval_mode_passes_finite_differences():
    rng = np.random.default_rng(6)
    mha = MultiHeadAttention(8, 2, rng, dropout=0.4, dtype=np.float64).eval()
    x = rng.standard_normal((2, 5, 8))
    assert_gradients_pass(SelfAttention(mha), x, causal_mask(5))
    assert mha.dropout.mask is None


def test_dropout_in_train_mode_backward_uses_the_forward_mask():
    class FixedDropoutAttention(Module):
        """Re-seeds the dropout before each forward, so every forward draws the same mask."""

        def __init__(self, mha):
            super().__init__()
            self.mha = mha

        def forward(self, x_q, x_kv):
            self.mha.dropout.rng = np.random.default_rng(42)
            return self.mha.forward(x_q, x_kv)

        def backward(self, dy):
            return self.mha.backward(dy)

    rng = np.random.default_rng(7)
    mha = MultiHeadAttention(8, 2, rng, dropout=0.5, dtype=np.float64)
    assert mha.training
    layer = FixedDropoutAttention(mha)
    x_q, x_kv = rng.standard_normal((2, 4, 8)), rng.standard_normal((2, 6, 8))
    assert_gradients_pass(layer, x_q, x_kv)

    # The mask did drop attention weights, and the output is not the eval output.
    y_train = layer.forward(x_q, x_kv)
    mask = mha.dropout.mask
    assert mask.shape == (2, 2, 4, 6) and (mask == 0).any() and (mask == 2.0).any()
    np.testing.assert_allclose(mha.attn.sum(-1), 1)  # self.attn is before dropout
    assert not np.allclose(y_train, mha.eval().forward(x_q, x_kv))


# --- against torch.nn.MultiheadAttention ------------------------------------------------


def torch_copy(mha):
    """torch.nn.MultiheadAttention with our weights (q, k, v packed into in_proj)."""
    p = {name: torch.from_numpy(param) for name, param, _ in mha.named_parameters()}
    ref = torch.nn.MultiheadAttention(mha.d_model, mha.n_heads, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([p["w_q.weight"], p["w_k.weight"], p["w_v.weight"]]))
        ref.in_proj_bias.copy_(torch.cat([p["w_q.bias"], p["w_k.bias"], p["w_v.bias"]]))
        ref.out_proj.weight.copy_(p["w_o.weight"])
        ref.out_proj.bias.copy_(p["w_o.bias"])
    return ref


def assert_equals_torch(mha, x_q, x_kv, mask, key_padding_mask, attn_mask, dy):
    ref = torch_copy(mha)
    self_attention = x_q is x_kv
    tq = torch.from_numpy(x_q).requires_grad_()
    tkv = tq if self_attention else torch.from_numpy(x_kv).requires_grad_()
    y_ref, w_ref = ref(
        tq,
        tkv,
        tkv,
        key_padding_mask=None if key_padding_mask is None else torch.from_numpy(key_padding_mask),
        attn_mask=None if attn_mask is None else torch.from_numpy(attn_mask),
        need_weights=True,
        average_attn_weights=True,
    )
    y_ref.backward(torch.from_numpy(dy))

    y = mha.forward(x_q, x_kv, mask)
    dx_q, dx_kv = mha.backward(dy)
    close = {"rtol": 1e-5, "atol": 1e-5}
    np.testing.assert_allclose(y, y_ref.detach().numpy(), **close)
    np.testing.assert_allclose(mha.attn.mean(1), w_ref.detach().numpy(), **close)
    if self_attention:
        np.testing.assert_allclose(dx_q + dx_kv, tq.grad.numpy(), **close)
    else:
        np.testing.assert_allclose(dx_q, tq.grad.numpy(), **close)
        np.testing.assert_allclose(dx_kv, tkv.grad.numpy(), **close)
    g = dict((name, grad) for name, _, grad in mha.named_parameters())
    in_w, in_b = ref.in_proj_weight.grad.numpy(), ref.in_proj_bias.grad.numpy()
    np.testing.assert_allclose(
        np.concatenate([g["w_q.weight"], g["w_k.weight"], g["w_v.weight"]]), in_w, **close
    )
    np.testing.assert_allclose(
        np.concatenate([g["w_q.bias"], g["w_k.bias"], g["w_v.bias"]]), in_b, **close
    )
    np.testing.assert_allclose(g["w_o.weight"], ref.out_proj.weight.grad.numpy(), **close)
    np.testing.assert_allclose(g["w_o.bias"], ref.out_proj.bias.grad.numpy(), **close)
    assert y.dtype == dx_q.dtype == dx_kv.dtype == mha.attn.dtype == np.float32


@pytest.mark.parametrize("masks", ["none", "padding", "causal", "causal & padding"])
def test_self_attention_equals_torch(masks):
    rng = np.random.default_rng(8)
    B, T, d_model, n_heads = 3, 6, 16, 4
    mha = MultiHeadAttention(d_model, n_heads, rng)
    x = rng.standard_normal((B, T, d_model)).astype(np.float32)
    dy = rng.standard_normal((B, T, d_model)).astype(np.float32)
    ids = lengths_to_ids([6, 4, 1], T, rng)  # every sentence has a first token
    ours, key_padding, attn = None, None, None
    if "padding" in masks:
        ours, key_padding = padding_mask(ids, 0), ids == 0  # torch: True = ignore
    if "causal" in masks:
        causal = causal_mask(T)
        ours = causal if ours is None else ours & causal
        attn = ~causal[0, 0]  # torch: True = not allowed
    assert_equals_torch(mha, x, x, ours, key_padding, attn, dy)


@pytest.mark.parametrize("padded", [False, True])
def test_cross_attention_equals_torch(padded):
    rng = np.random.default_rng(9)
    B, T, S, d_model, n_heads = 2, 5, 7, 12, 3
    mha = MultiHeadAttention(d_model, n_heads, rng)
    x_q = rng.standard_normal((B, T, d_model)).astype(np.float32)
    x_kv = rng.standard_normal((B, S, d_model)).astype(np.float32)
    dy = rng.standard_normal((B, T, d_model)).astype(np.float32)
    ids = lengths_to_ids([7, 3], S, rng)
    mask, key_padding = (padding_mask(ids, 0), ids == 0) if padded else (None, None)
    assert_equals_torch(mha, x_q, x_kv, mask, key_padding, None, dy)


# --- dtypes, structure ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_layer_computes_in_the_dtype_of_its_weights(dtype):
    rng = np.random.default_rng(10)
    mha = MultiHeadAttention(8, 4, rng, dtype=dtype)
    x_q = rng.standard_normal((2, 3, 8)).astype(dtype)
    x_kv = rng.standard_normal((2, 5, 8)).astype(dtype)
    mask = padding_mask(np.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]]), 0)
    y = mha.forward(x_q, x_kv, mask)
    dx_q, dx_kv = mha.backward(np.ones_like(y))
    assert y.dtype == dx_q.dtype == dx_kv.dtype == mha.attn.dtype == dtype
    assert all(p.dtype == g.dtype == dtype for _, p, g in mha.named_parameters())
    out, cache = attention_forward(*(a.astype(dtype) for a in (dx_q[:, None],) * 3), mask=None)
    assert out.dtype == dtype and all(g.dtype == dtype for g in attention_backward(out, cache))


def test_float64_weights_loaded_into_a_float32_layer_give_float64_math():
    rng = np.random.default_rng(11)
    mha = MultiHeadAttention(8, 2, rng)  # float32
    for name, param, _ in mha.named_parameters():
        module, key = name.split(".")
        getattr(mha, module).params[key] = param.astype(np.float64)
        getattr(mha, module).dparams[key] = np.zeros(param.shape)
    x = rng.standard_normal((1, 4, 8))
    y = mha.forward(x, x, causal_mask(4))
    assert y.dtype == np.float64 and mha.attn.dtype == np.float64
    assert all(g.dtype == np.float64 for g in mha.backward(np.ones_like(y)))
    with pytest.raises(TypeError, match="weights' dtype float64"):
        mha.forward(x.astype(np.float32), x.astype(np.float32))


def test_children_and_parameter_names_follow_the_paper_and_torch():
    mha = MultiHeadAttention(12, 3, np.random.default_rng(0), dropout=0.1)
    assert [name for name, _, _ in mha.named_parameters()] == PARAM_NAMES
    for name in ("w_q", "w_k", "w_v", "w_o"):
        layer = getattr(mha, name)
        assert isinstance(layer, Linear) and layer.params["weight"].shape == (12, 12)
        assert layer.params["bias"].shape == (12,)
        assert layer.params["weight"].dtype == np.float32
    assert isinstance(mha.dropout, Dropout) and mha.dropout.p == 0.1
    assert mha.d_k == 4
    x = np.zeros((2, 3, 12), dtype=np.float32)
    mha.forward(x, np.zeros((2, 5, 12), dtype=np.float32))
    assert mha.attn.shape == (2, 3, 3, 5)
    assert mha.eval().dropout.training is False


# --- bad input ----------------------------------------------------------------------------

F32 = np.float32


def mha_call(x_q_shape=(2, 3, 8), x_kv_shape=(2, 4, 8), mask=None, dtype=F32, kv_dtype=None):
    mha = MultiHeadAttention(8, 2, np.random.default_rng(0))
    x_q = np.zeros(x_q_shape, dtype=dtype)
    x_kv = np.zeros(x_kv_shape, dtype=kv_dtype or dtype)
    return lambda: mha.forward(x_q, x_kv, mask)


def backward_call(dy_shape):
    mha = MultiHeadAttention(8, 2, np.random.default_rng(0))
    x = np.zeros((2, 3, 8), dtype=F32)
    mha.forward(x, x)
    return lambda: mha.backward(np.zeros(dy_shape, dtype=F32))


Z = np.zeros((1, 2, 3, 4))


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda: MultiHeadAttention(10, 3, np.random.default_rng(0)),
            ValueError,
            r"d_model \(10\).*n_heads \(3\)",
        ),
        (lambda: MultiHeadAttention(8, 0, np.random.default_rng(0)), ValueError, "n_heads"),
        (
            lambda: MultiHeadAttention(8, 2, np.random.default_rng(0), dropout=1.0),
            ValueError,
            r"\[0, 1\)",
        ),
        (mha_call(x_q_shape=(2, 3, 6)), ValueError, "x_q must have last dimension 8"),
        (mha_call(x_kv_shape=(2, 4, 6)), ValueError, "x_kv must have last dimension 8"),
        (mha_call(x_q_shape=(3, 8)), ValueError, "x_q must have 3 dimensions"),
        (mha_call(x_kv_shape=(3, 4, 8)), ValueError, "same batch size"),
        (mha_call(x_q_shape=(2, 0, 8)), ValueError, "x_q must not be empty"),
        (mha_call(x_kv_shape=(2, 0, 8)), ValueError, "x_kv must not be empty"),
        (mha_call(dtype=np.int64), TypeError, "x_q must have a dtype of kind 'f'"),
        (mha_call(dtype=np.float64), TypeError, "weights' dtype float32"),
        (mha_call(kv_dtype=np.float16), TypeError, "x_kv must have the weights' dtype"),
        (
            lambda: MultiHeadAttention(8, 2, np.random.default_rng(0)).forward([[[0.0] * 8]], None),
            TypeError,
            "numpy array",
        ),
        (mha_call(mask=np.ones((2, 1, 1, 4), dtype=np.int64)), TypeError, "dtype bool"),
        (mha_call(mask=[[True]]), TypeError, "numpy bool array"),
        (
            mha_call(mask=np.ones((2, 4), dtype=bool)),
            ValueError,
            r"\(2, 2, 3, 4\): it needs 4 axes",
        ),
        (
            mha_call(mask=np.ones((2, 1, 1, 5), dtype=bool)),
            ValueError,
            r"shape \(2, 1, 1, 5\) does not broadcast to \(B, n_heads, T, S\) = \(2, 2, 3, 4\)",
        ),
        (mha_call(mask=causal_mask(4)), ValueError, "does not broadcast"),
        (backward_call((2, 3, 4)), ValueError, r"output's shape \(2, 3, 8\)"),
        (
            lambda: MultiHeadAttention(8, 2, np.random.default_rng(0)).backward(
                np.zeros((1, 1, 8))
            ),
            RuntimeError,
            "before forward",
        ),
        (lambda: attention_forward(Z, Z[:, :, :2], Z), ValueError, "expected q .B, h, T, d_k."),
        (lambda: attention_forward(Z, Z, Z.astype(F32)), TypeError, "share one dtype"),
        (lambda: attention_forward(Z[0], Z, Z), ValueError, "q must have 4 dimensions"),
        (lambda: causal_mask(0), ValueError, "T >= 1"),
        (lambda: causal_mask(2.5), TypeError, "T must be an integer"),
        (lambda: padding_mask(np.ones((2, 3)), 0), TypeError, "ids must have a dtype of kind"),
        (lambda: padding_mask(np.ones(3, dtype=int), 0), ValueError, "ids must have 2 dim"),
        (lambda: padding_mask(np.ones((0, 3), dtype=int), 0), ValueError, "at least one"),
        (lambda: padding_mask(np.ones((1, 3), dtype=int), None), TypeError, "pad_id must be"),
    ],
)
def test_bad_input_gets_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()
