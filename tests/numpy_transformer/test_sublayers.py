"""Chapter 4's sublayers: finite differences, torch.nn references, residual compositions."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mlscratch.numpy_transformer.gradcheck import check_module
from mlscratch.numpy_transformer.layers import Dropout, Module
from mlscratch.numpy_transformer.sublayers import FeedForward, LayerNorm

TOL = 1e-6


def random_layer_norm(d_model, rng, eps=1e-5, dtype=np.float64):
    """A LayerNorm with random weight and bias, so that both enter every gradient."""
    norm = LayerNorm(d_model, eps=eps, dtype=dtype)
    norm.params["weight"][:] = rng.standard_normal(d_model)
    norm.params["bias"][:] = rng.standard_normal(d_model)
    return norm


@settings(max_examples=25, deadline=None)
@given(
    lead=st.lists(st.integers(1, 3), min_size=1, max_size=3),
    d_model=st.integers(1, 9),
    scale=st.sampled_from([0.1, 1.0, 30.0]),
    seed=st.integers(0, 2**16),
)
def test_layer_norm_passes_finite_differences_on_random_shapes(lead, d_model, scale, seed):
    rng = np.random.default_rng(seed)
    # Two features normalize to (+1, -1) or (-1, +1) up to eps, so their input gradient is
    # of order eps / scale**3 and would drown in the differences' round-off; an eps of the
    # order of the variance keeps it measurable. (A single feature gives exactly zero.)
    norm = random_layer_norm(d_model, rng, eps=scale**2 if d_model == 2 else 1e-5)
    x = scale * rng.standard_normal((*lead, d_model)) + rng.standard_normal()
    errors = check_module(norm, x, seed=seed)
    assert set(errors) == {"input 0", "weight", "bias"}
    assert max(errors.values()) <= TOL, errors


def test_layer_norm_output_is_normalized_and_the_input_gradient_is_projected():
    rng = np.random.default_rng(1)
    norm = LayerNorm(16, eps=1e-12, dtype=np.float64)  # tiny eps: the exact identities hold
    x = 5 * rng.standard_normal((3, 4, 16)) + 2
    y = norm.forward(x)
    np.testing.assert_allclose(y.mean(-1), 0, atol=1e-12)
    np.testing.assert_allclose(y.std(-1), 1, rtol=1e-9)
    dx = norm.backward(rng.standard_normal(x.shape))
    # No gradient along the directions LayerNorm ignores: shifts (all ones) and scaling (xhat).
    np.testing.assert_allclose(dx.sum(-1), 0, atol=1e-12)
    np.testing.assert_allclose((dx * y).sum(-1), 0, atol=1e-9)


def test_layer_norm_of_a_single_feature_outputs_the_bias_and_passes_no_gradient():
    rng = np.random.default_rng(2)
    norm = random_layer_norm(1, rng)
    x = rng.standard_normal((4, 5, 1))
    y = norm.forward(x)
    np.testing.assert_array_equal(y, np.broadcast_to(norm.params["bias"], y.shape))
    dy = rng.standard_normal(y.shape)
    np.testing.assert_array_equal(norm.backward(dy), 0.0)
    np.testing.assert_array_equal(norm.dparams["weight"], 0.0)
    np.testing.assert_allclose(norm.dparams["bias"], dy.sum())
    # torch computes the same function: the bias, and a zero gradient up to round-off.
    ref = torch.nn.LayerNorm(1, dtype=torch.float64)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(norm.params["weight"]))
        ref.bias.copy_(torch.from_numpy(norm.params["bias"]))
    xt = torch.from_numpy(x).requires_grad_()
    yt = ref(xt)
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_array_equal(yt.detach().numpy(), y)
    np.testing.assert_allclose(xt.grad.numpy(), 0.0, atol=1e-10)
    np.testing.assert_allclose(ref.weight.grad.numpy(), 0.0, atol=1e-10)


def test_constant_vectors_such_as_zero_padding_stay_finite():
    norm = LayerNorm(8)
    y = norm.forward(np.zeros((2, 3, 8), dtype=np.float32))
    dx = norm.backward(np.ones((2, 3, 8), dtype=np.float32))
    assert np.isfinite(y).all() and np.isfinite(dx).all()
    np.testing.assert_array_equal(y, 0.0)


@pytest.mark.parametrize("d_model", [2, 7, 64])
def test_layer_norm_equals_torch_nn_layer_norm_with_copied_parameters(d_model):
    rng = np.random.default_rng(3)
    eps = 1e-4
    ours = random_layer_norm(d_model, rng, eps=eps, dtype=np.float32)
    ref = torch.nn.LayerNorm(d_model, eps=eps)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(ours.params["weight"]))
        ref.bias.copy_(torch.from_numpy(ours.params["bias"]))
    x = (3 * rng.standard_normal((2, 5, d_model)) + 1).astype(np.float32)
    dy = rng.standard_normal((2, 5, d_model)).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_()
    yt = ref(xt)
    yt.backward(torch.from_numpy(dy))
    y = ours.forward(x)
    dx = ours.backward(dy)
    assert y.dtype == dx.dtype == np.float32
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        ours.dparams["weight"], ref.weight.grad.numpy(), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(ours.dparams["bias"], ref.bias.grad.numpy(), rtol=1e-5, atol=1e-5)


@settings(max_examples=15, deadline=None)
@given(
    lead=st.lists(st.integers(1, 3), min_size=1, max_size=3),
    d_model=st.integers(1, 6),
    d_ff=st.integers(1, 10),
    seed=st.integers(0, 2**16),
)
def test_feed_forward_passes_finite_differences_on_random_shapes(lead, d_model, d_ff, seed):
    rng = np.random.default_rng(seed)
    ff = FeedForward(d_model, d_ff, rng, dropout=0.2, dtype=np.float64).eval()
    errors = check_module(ff, rng.standard_normal((*lead, d_model)), seed=seed)
    assert set(errors) == {"input 0", "w_1.weight", "w_1.bias", "w_2.weight", "w_2.bias"}
    assert max(errors.values()) <= TOL, errors


def torch_feed_forward(ours):
    """linear2(dropout(relu(linear1(x)))) from torch.nn.Linear, with our weights copied."""
    linear1 = torch.nn.Linear(ours.d_model, ours.d_ff)
    linear2 = torch.nn.Linear(ours.d_ff, ours.d_model)
    with torch.no_grad():
        for lin, mine in ((linear1, ours.w_1), (linear2, ours.w_2)):
            lin.weight.copy_(torch.from_numpy(mine.params["weight"]))
            lin.bias.copy_(torch.from_numpy(mine.params["bias"]))
    return linear1, linear2


@pytest.mark.parametrize("training", [False, True])
def test_feed_forward_equals_torch_linear_relu_dropout_linear(training):
    rng = np.random.default_rng(4)
    ours = FeedForward(8, 32, rng, dropout=0.3).train(training)
    linear1, linear2 = torch_feed_forward(ours)
    x = rng.standard_normal((3, 7, 8)).astype(np.float32)
    dy = rng.standard_normal((3, 7, 8)).astype(np.float32)
    y = ours.forward(x)
    dx = ours.backward(dy)
    # torch's dropout draws its own mask; in training we replay ours (None in eval mode).
    mask = ours.dropout.mask
    assert (mask is not None) == training
    xt = torch.from_numpy(x).requires_grad_()
    h = torch.relu(linear1(xt))
    yt = linear2(h * torch.from_numpy(mask) if training else h)
    yt.backward(torch.from_numpy(dy))
    assert y.dtype == dx.dtype == np.float32
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-5, atol=1e-5)
    for name, ref in (("w_1", linear1), ("w_2", linear2)):
        grads = getattr(ours, name).dparams
        np.testing.assert_allclose(grads["weight"], ref.weight.grad.numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(grads["bias"], ref.bias.grad.numpy(), rtol=1e-5, atol=1e-5)


def test_feed_forward_is_position_wise():
    rng = np.random.default_rng(5)
    ff = FeedForward(4, 16, rng)
    x = rng.standard_normal((2, 6, 4)).astype(np.float32)
    y = ff.forward(x)
    one = ff.forward(x[1:2, 3:4])  # a single position on its own
    np.testing.assert_allclose(one[0, 0], y[1, 3], rtol=1e-6, atol=1e-7)
    names = [name for name, _, _ in ff.named_parameters()]
    assert names == ["w_1.weight", "w_1.bias", "w_2.weight", "w_2.bias"]


class PostNorm(Module):
    """LN(x + dropout(FF(x))), the paper's residual sublayer, from this chapter's layers."""

    def __init__(self, d_model, d_ff, rng, dropout=0.0, dtype=np.float64):
        super().__init__()
        self.ff = FeedForward(d_model, d_ff, rng, dropout, dtype)
        self.dropout = Dropout(dropout, rng)
        self.norm = random_layer_norm(d_model, rng, dtype=dtype)

    def forward(self, x):
        return self.norm.forward(x + self.dropout.forward(self.ff.forward(x)))

    def backward(self, dy):
        ds = self.norm.backward(dy)
        return ds + self.ff.backward(self.dropout.backward(ds))


class PreNorm(Module):
    """x + dropout(FF(LN(x))), the norm_first layout."""

    def __init__(self, d_model, d_ff, rng, dropout=0.0, dtype=np.float64):
        super().__init__()
        self.norm = random_layer_norm(d_model, rng, dtype=dtype)
        self.ff = FeedForward(d_model, d_ff, rng, dropout, dtype)
        self.dropout = Dropout(dropout, rng)

    def forward(self, x):
        return x + self.dropout.forward(self.ff.forward(self.norm.forward(x)))

    def backward(self, dy):
        return dy + self.norm.backward(self.ff.backward(self.dropout.backward(dy)))


class Stack(Module):
    """Residual blocks in sequence: gradients through several sums and norms."""

    def __init__(self, blocks):
        super().__init__()
        self.layers = blocks

    def forward(self, x):
        for block in self.layers:
            x = block.forward(x)
        return x

    def backward(self, dy):
        for block in reversed(self.layers):
            dy = block.backward(dy)
        return dy


@pytest.mark.parametrize("block", [PostNorm, PreNorm])
@settings(max_examples=8, deadline=None)
@given(
    B=st.integers(1, 3),
    T=st.integers(1, 4),
    d_model=st.integers(3, 6),  # see the LayerNorm check above for why not 2
    n_blocks=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_residual_compositions_pass_finite_differences(block, B, T, d_model, n_blocks, seed):
    rng = np.random.default_rng(seed)
    stack = Stack([block(d_model, 3 * d_model, rng, dropout=0.1) for _ in range(n_blocks)])
    errors = check_module(stack.eval(), rng.standard_normal((B, T, d_model)), seed=seed)
    assert len(errors) == 1 + 6 * n_blocks  # the input and every parameter
    assert max(errors.values()) <= TOL, errors


@pytest.mark.parametrize("block", [PostNorm, PreNorm])
def test_residual_compositions_equal_torch_autograd(block):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 5, 6)).astype(np.float32)
    dy = rng.standard_normal((2, 5, 6)).astype(np.float32)
    ours = block(6, 12, rng, dtype=np.float32)
    linear1, linear2 = torch_feed_forward(ours.ff)
    norm = torch.nn.LayerNorm(6)
    with torch.no_grad():
        norm.weight.copy_(torch.from_numpy(ours.norm.params["weight"]))
        norm.bias.copy_(torch.from_numpy(ours.norm.params["bias"]))

    def ff(h):
        return linear2(torch.relu(linear1(h)))

    xt = torch.from_numpy(x).requires_grad_()
    yt = norm(xt + ff(xt)) if block is PostNorm else xt + ff(norm(xt))
    yt.backward(torch.from_numpy(dy))
    y = ours.forward(x)
    dx = ours.backward(dy)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-5, atol=1e-5)
    refs = {"norm": norm, "ff.w_1": linear1, "ff.w_2": linear2}
    for name, _, grad in ours.named_parameters():
        module, param = name.rsplit(".", 1)
        expected = getattr(refs[module], param).grad.numpy()
        np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-5, err_msg=name)


def test_parameter_gradients_accumulate_over_backward_calls():
    rng = np.random.default_rng(8)
    x, dy = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 4))
    for layer in (random_layer_norm(4, rng), FeedForward(4, 8, rng, dtype=np.float64)):
        layer.forward(x)
        layer.backward(dy)
        once = {name: g.copy() for name, _, g in layer.named_parameters()}
        layer.forward(x)
        layer.backward(dy)
        for name, _, g in layer.named_parameters():
            np.testing.assert_allclose(g, 2 * once[name], rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtypes_are_preserved(dtype):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 4)).astype(dtype)
    for layer in (LayerNorm(4, dtype=dtype), FeedForward(4, 8, rng, dropout=0.5, dtype=dtype)):
        y = layer.forward(x)
        dx = layer.backward(np.ones_like(y))
        assert y.dtype == dx.dtype == dtype
        assert all(p.dtype == g.dtype == dtype for _, p, g in layer.named_parameters())


def _norm():
    norm = LayerNorm(4)
    norm.forward(np.ones((2, 3, 4), dtype=np.float32))
    return norm


def _ff():
    ff = FeedForward(4, 8, np.random.default_rng(0))
    ff.forward(np.ones((2, 3, 4), dtype=np.float32))
    return ff


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: _norm().forward(np.ones((2, 3, 5))), ValueError, "last dimension 4"),
        (lambda: _norm().forward(np.ones((2, 4), dtype=int)), TypeError, "dtype"),
        (lambda: _norm().forward([[1.0, 2.0, 3.0, 4.0]]), TypeError, "numpy array"),
        (lambda: _norm().forward(np.ones((0, 4))), ValueError, "empty batch"),
        (lambda: _norm().backward(np.ones((1, 3, 4))), ValueError, r"shape \(2, 3, 4\)"),
        (lambda: _norm().backward(np.ones((2, 3, 4), dtype=int)), TypeError, "dtype"),
        (lambda: LayerNorm(0), ValueError, "positive"),
        (lambda: LayerNorm(4, eps=0.0), ValueError, "eps must be positive"),
        (lambda: _ff().forward(np.ones((2, 3, 5))), ValueError, "last dimension 4"),
        (lambda: _ff().forward(np.ones((2, 0, 4))), ValueError, "empty batch"),
        (lambda: _ff().forward(np.ones((2, 4), dtype=np.int32)), TypeError, "dtype"),
        (lambda: _ff().backward(np.ones((2, 3, 8))), ValueError, r"shape \(2, 3, 4\)"),
        (lambda: _ff().backward(np.ones((6, 4))), ValueError, r"shape \(2, 3, 4\)"),
        (
            lambda: FeedForward(4, 8, np.random.default_rng(0), dropout=-0.1),
            ValueError,
            r"\[0, 1\)",
        ),
    ],
)
def test_bad_input_gets_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()
