"""Chapter 1's layers: finite differences in float64, torch.nn as the reference, bad input."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mlscratch.numpy_transformer.gradcheck import check_module, numerical_gradient, relative_error
from mlscratch.numpy_transformer.layers import (
    CrossEntropyLoss,
    Dropout,
    Linear,
    Module,
    ReLU,
    log_softmax,
    softmax,
)

TOL = 1e-6


@settings(max_examples=15, deadline=None)
@given(
    lead=st.lists(st.integers(1, 3), min_size=1, max_size=3),
    d_in=st.integers(1, 6),
    d_out=st.integers(1, 6),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_linear_passes_finite_differences_on_random_shapes(lead, d_in, d_out, bias, seed):
    rng = np.random.default_rng(seed)
    layer = Linear(d_in, d_out, rng, bias=bias, dtype=np.float64)
    errors = check_module(layer, rng.standard_normal((*lead, d_in)), seed=seed)
    assert set(errors) == {"input 0", "weight"} | ({"bias"} if bias else set())
    assert max(errors.values()) <= TOL, errors


def test_relu_and_dropout_in_eval_mode_pass_finite_differences():
    x = np.random.default_rng(1).standard_normal((4, 5, 6))
    assert check_module(ReLU(), x)["input 0"] <= TOL
    assert check_module(Dropout(0.5).eval(), x)["input 0"] <= TOL


def test_dropout_backward_uses_the_forward_mask():
    drop = Dropout(0.25, np.random.default_rng(0))
    x = np.ones((200, 100))
    y = drop.forward(x)
    assert set(np.unique(y)) == {0.0, 1 / 0.75}
    assert abs((y == 0).mean() - 0.25) < 0.01  # 20,000 draws
    dy = np.random.default_rng(1).standard_normal(x.shape)
    assert np.array_equal(drop.backward(dy), dy * y)


def test_dropout_is_reproducible_from_its_seed_and_identity_in_eval():
    x = np.ones((8, 8), dtype=np.float32)
    a = Dropout(0.5, np.random.default_rng(7)).forward(x)
    b = Dropout(0.5, np.random.default_rng(7)).forward(x)
    assert np.array_equal(a, b) and a.dtype == np.float32
    assert Dropout(0.5).eval().forward(x) is x


def test_cross_entropy_gradient_matches_finite_differences():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((3, 4, 7))
    targets = rng.integers(0, 7, (3, 4))
    ce = CrossEntropyLoss()
    ce.forward(logits, targets)
    analytic = ce.backward()
    numeric = numerical_gradient(lambda: ce.forward(logits, targets), logits)
    assert relative_error(analytic, numeric) <= TOL


def test_linear_equals_torch_nn_linear_with_copied_weights():
    rng = np.random.default_rng(3)
    ours = Linear(5, 3, rng)
    ref = torch.nn.Linear(5, 3)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(ours.params["weight"]))
        ref.bias.copy_(torch.from_numpy(ours.params["bias"]))
    x = rng.standard_normal((2, 4, 5)).astype(np.float32)
    dy = rng.standard_normal((2, 4, 3)).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_()
    yt = ref(xt)
    yt.backward(torch.from_numpy(dy))
    y = ours.forward(x)
    dx = ours.backward(dy)
    assert y.dtype == np.float32 and dx.dtype == np.float32
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        ours.dparams["weight"], ref.weight.grad.numpy(), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(ours.dparams["bias"], ref.bias.grad.numpy(), rtol=1e-5, atol=1e-5)


def test_softmax_and_cross_entropy_equal_torch():
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((6, 9)) * 30  # large logits: stability matters
    targets = rng.integers(0, 9, 6)
    lt = torch.from_numpy(logits).requires_grad_()
    ref = torch.nn.functional.cross_entropy(lt, torch.from_numpy(targets))
    ref.backward()
    ce = CrossEntropyLoss()
    assert ce.forward(logits, targets) == pytest.approx(ref.item(), rel=1e-12)
    np.testing.assert_allclose(ce.backward(), lt.grad.numpy(), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(softmax(logits), torch.softmax(lt, -1).detach(), rtol=1e-12)
    np.testing.assert_allclose(log_softmax(logits), torch.log_softmax(lt, -1).detach(), atol=1e-12)


def test_parameters_are_named_like_torch_and_gradients_accumulate():
    class Net(Module):
        def __init__(self, rng):
            super().__init__()
            self.inp = Linear(2, 3, rng)
            self.layers = [Linear(3, 3, rng), Linear(3, 1, rng, bias=False)]

    net = Net(np.random.default_rng(0))
    names = [name for name, _, _ in net.named_parameters()]
    assert names == [
        "inp.weight",
        "inp.bias",
        "layers.0.weight",
        "layers.0.bias",
        "layers.1.weight",
    ]
    layer = net.inp
    x = np.ones((1, 2), dtype=np.float32)
    for _ in range(2):
        layer.forward(x)
        layer.backward(np.ones((1, 3), dtype=np.float32))
    np.testing.assert_array_equal(layer.dparams["bias"], 2.0)
    net.zero_grad()
    assert all(not g.any() for _, _, g in net.named_parameters())
    assert net.eval().layers[1].training is False and net.train().inp.training is True


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda: Linear(3, 2, np.random.default_rng(0)).forward(np.ones((2, 4))),
            ValueError,
            "last dimension 3",
        ),
        (
            lambda: Linear(3, 2, np.random.default_rng(0)).forward(np.ones((2, 3), int)),
            TypeError,
            "dtype",
        ),
        (
            lambda: Linear(3, 2, np.random.default_rng(0)).forward([[1.0, 2.0, 3.0]]),
            TypeError,
            "numpy array",
        ),
        (
            lambda: CrossEntropyLoss().forward(np.ones((2, 3)), np.array([0, 3])),
            ValueError,
            r"\[0, 3\)",
        ),
        (
            lambda: CrossEntropyLoss().forward(np.ones((2, 3)), np.array([0])),
            ValueError,
            "targets shape",
        ),
        (
            lambda: CrossEntropyLoss().forward(np.ones((2, 3)), np.array([0.0, 1.0])),
            TypeError,
            "targets",
        ),
        (
            lambda: CrossEntropyLoss().forward(np.ones((0, 3)), np.zeros(0, int)),
            ValueError,
            "empty batch",
        ),
        (lambda: Dropout(1.0), ValueError, r"\[0, 1\)"),
    ],
)
def test_bad_input_gets_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


class TwoLayers(Module):
    def __init__(self, rng, dtype=np.float32):
        super().__init__()
        self.layers = [Linear(3, 4, rng, dtype=dtype), Linear(4, 2, rng, bias=False, dtype=dtype)]


def test_state_dict_and_grads_share_keys_and_load_state_dict_round_trips():
    net = TwoLayers(np.random.default_rng(0))
    assert (
        list(net.state_dict())
        == list(net.grads())
        == ["layers.0.weight", "layers.0.bias", "layers.1.weight"]
    )
    other = TwoLayers(np.random.default_rng(1))
    other.load_state_dict(net.state_dict())
    for name, value in net.state_dict().items():
        assert np.array_equal(other.state_dict()[name], value)
        assert other.state_dict()[name] is not value  # copied, not shared
    assert all(not g.any() for g in other.grads().values())


def test_loading_float64_weights_makes_the_model_compute_in_float64():
    net = TwoLayers(np.random.default_rng(0))
    net.load_state_dict({k: v.astype(np.float64) for k, v in net.state_dict().items()})
    y = net.layers[0].forward(np.ones((2, 3)))
    assert y.dtype == np.float64 and net.grads()["layers.0.bias"].dtype == np.float64


@pytest.mark.parametrize(
    ("edit", "error", "message"),
    [
        (lambda d: d.pop("layers.1.weight"), KeyError, r"missing \['layers.1.weight'\]"),
        (lambda d: d.update(extra=np.zeros(1, np.float32)), KeyError, r"unexpected \['extra'\]"),
        (
            lambda d: d.update({"layers.0.bias": np.zeros(5, np.float32)}),
            ValueError,
            r"layers.0.bias: expected \(4,\), got \(5,\)",
        ),
        (
            lambda d: d.update({"layers.0.bias": np.zeros(4, np.float64)}),
            TypeError,
            "one float dtype",
        ),
        (lambda d: d.update({"layers.0.bias": np.zeros(4, np.int64)}), TypeError, "float"),
    ],
)
def test_load_state_dict_rejects_bad_state_and_changes_nothing(edit, error, message):
    net = TwoLayers(np.random.default_rng(0))
    before = {k: v.copy() for k, v in net.state_dict().items()}
    state = {k: np.zeros_like(v) for k, v in net.state_dict().items()}
    edit(state)
    with pytest.raises(error, match=message):
        net.load_state_dict(state)
    for name, value in net.state_dict().items():
        assert np.array_equal(value, before[name])
