"""The gradient checker itself: it must pass correct gradients and catch wrong ones."""

import numpy as np
import pytest

from mlscratch.numpy_transformer.gradcheck import (
    check_module,
    compare_gradients,
    numerical_gradient,
    relative_error,
)
from mlscratch.numpy_transformer.layers import Linear


def test_numerical_gradient_of_a_known_function():
    x = np.random.default_rng(0).standard_normal((3, 4))
    grad = numerical_gradient(lambda: float(np.sum(x**3)), x)
    assert relative_error(grad, 3 * x**2) < 1e-8


def test_numerical_gradient_restores_its_input():
    x = np.arange(6.0).reshape(2, 3)
    numerical_gradient(lambda: float(x.sum()), x)
    assert np.array_equal(x, np.arange(6.0).reshape(2, 3))


def test_numerical_gradient_refuses_arrays_it_cannot_perturb_in_place():
    x = np.arange(12.0).reshape(3, 4)[:, :3]
    with pytest.raises(ValueError, match="contiguous"):
        numerical_gradient(lambda: float(x.sum()), x)


def test_relative_error_is_scale_free_and_zero_for_equal_arrays():
    a = np.array([1.0, -2.0, 3.0])
    assert relative_error(a, a) == 0.0
    assert relative_error(a, a * (1 + 1e-9)) == pytest.approx(1e-9, rel=1e-3)
    assert relative_error(1e6 * a, 1e6 * a * (1 + 1e-9)) == pytest.approx(1e-9, rel=1e-3)
    assert relative_error(np.zeros(3), np.zeros(3)) == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        relative_error(np.zeros(3), np.zeros(4))


class TransposedWeightGrad(Linear):
    def backward(self, dy):
        x2, dy2 = self.x.reshape(-1, self.d_in), dy.reshape(-1, self.d_out)
        self.dparams["weight"] += x2.T @ dy2
        self.dparams["bias"] += dy2.sum(axis=0)
        return dy @ self.params["weight"]


class ForgetsBias(Linear):
    def backward(self, dy):
        dx = super().backward(dy)
        self.dparams["bias"][...] = 0
        return dx


@pytest.mark.parametrize("broken", [TransposedWeightGrad, ForgetsBias])
def test_check_module_catches_a_wrong_backward(broken):
    rng = np.random.default_rng(0)
    layer = broken(4, 4, rng, dtype=np.float64)
    errors = check_module(layer, rng.standard_normal((2, 3, 4)))
    assert errors["input 0"] < 1e-6
    assert max(errors["weight"], errors["bias"]) > 0.1


def test_a_zero_gradient_is_measured_against_the_largest_gradient():
    x, w = np.array([1.0, 2.0]), np.array([3.0, -1.0])

    def loss():
        return float(np.sum(x * w) + 0 * z.sum())

    z = np.array([5.0, 6.0])  # loss does not depend on z: its gradient is exactly 0
    analytic = {"x": w.copy(), "z": np.zeros(2), "w": x.copy()}
    errors = compare_gradients(loss, {"x": x, "z": z, "w": w}, analytic)
    assert max(errors.values()) < 1e-8
    analytic["z"] = np.array([0.0, 0.01])  # a wrong nonzero gradient is still caught
    assert compare_gradients(loss, {"x": x, "z": z, "w": w}, analytic)["z"] > 1e-3
