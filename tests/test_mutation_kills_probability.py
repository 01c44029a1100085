"""Behaviour of mlnb.probability that the other unit tests left unpinned (found by mutation testing,
docs/MUTATION.md): the gradient of the exact sigmoid is the true derivative, in value, not only
non-zero."""
from __future__ import annotations

import math

import pytest
import torch

from mlnb import probability as P

pytestmark = pytest.mark.unit


def _true_derivative(z: float) -> float:
    s = 1.0 / (1.0 + math.exp(-z))
    return s * (1.0 - s)


@pytest.mark.parametrize("z", [-6.0, -1.5, -0.25, 0.0, 0.25, 1.5, 6.0, 20.0])
def test_sigmoid_gradient_equals_sigma_z_times_sigma_minus_z(z):
    t = torch.tensor([z], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(P.sigmoid(t).sum(), t)
    assert grad.item() == pytest.approx(_true_derivative(z), rel=1e-12)


def test_sigmoid_gradient_of_a_saturated_float32_logit_is_the_true_derivative():
    # torch.sigmoid's own backward gives exactly 0 here (p rounds to 1.0 in float32)
    t = torch.tensor([20.0], requires_grad=True)
    (grad,) = torch.autograd.grad(P.sigmoid(t).sum(), t)
    assert grad.dtype == torch.float32
    assert grad.item() == pytest.approx(_true_derivative(20.0), rel=1e-5)


def test_sigmoid_gradient_scales_with_the_incoming_gradient():
    t = torch.tensor([0.0, 2.0], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(P.sigmoid(t), t, grad_outputs=torch.tensor([3.0, -2.0], dtype=torch.float64))
    assert grad.tolist() == pytest.approx([3.0 * 0.25, -2.0 * _true_derivative(2.0)], rel=1e-12)
