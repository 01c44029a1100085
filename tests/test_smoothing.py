"""Randomized smoothing (mlnb.smoothing) against closed forms on a linear model.

For a linear label ``f_i(x) = w_i·x + b_i`` (a logit) and ``δ ~ N(0, σ² I)``, ``w_i·δ ~ N(0, σ² ||w_i||²)``, so
``P(f_i(x+δ) >= 0) = Φ((w_i·x + b_i) / (σ ||w_i||))`` and the smoothed label's exact certified radius is
``|w_i·x + b_i| / ||w_i||``: the distance to its hyperplane (Cohen et al., ICML 2019, Sec. 3.1).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from mlnb.smoothing import (Certificate, SmoothedModel, certificate_from_counts, certified_accuracy, certify,
                            check_certificate, clopper_pearson_lower, noise_counts)

pytestmark = pytest.mark.unit


class Linear(torch.nn.Module):
    """``(N, 1, 2, 2) -> (N, L)`` logits ``x·w_i + b_i``."""

    def __init__(self, w, b):
        super().__init__()
        self.w, self.b = torch.as_tensor(w, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32)

    def forward(self, x):
        return x.flatten(1) @ self.w.t() + self.b


# three labels with margins of different sign and size: true agreement probabilities about 0.93, 0.79 and 0.66
W = [[1.0, -0.5, 0.3, 0.8], [0.2, 0.9, -1.0, 0.4], [-0.6, 0.1, 0.7, -0.2]]
X = torch.tensor([[0.6, 0.2, 0.5, 0.7]]).view(1, 1, 2, 2)


def _model(sigma):
    w = torch.tensor(W)
    wn = w.norm(dim=1)
    want_margin = torch.tensor([1.5, -0.8, 0.4]) * sigma * wn  # z_i = sigma ||w_i|| * (1.5, -0.8, 0.4)
    b = want_margin - X.flatten(1)[0] @ w.t()
    exact_radius = (want_margin.abs() / wn).double()
    p_true = torch.from_numpy(norm.cdf(np.array([1.5, 0.8, 0.4])))
    return Linear(w, b).eval(), exact_radius, p_true


def test_certified_radius_approaches_the_closed_form_from_below():
    sigma = 0.25
    model, exact, p_true = _model(sigma)
    cert = certify(model, X, sigma=sigma, n0=200, n=40_000, alpha=0.001, batch_size=20_000,
                   generator=torch.Generator().manual_seed(0), progress=False)
    assert cert.prediction[0].tolist() == [True, False, True]
    assert not cert.abstain.any()
    assert (cert.p_lower[0] <= p_true).all()
    assert (cert.radius[0] <= exact).all(), (cert.radius, exact)
    # 40,000 draws: the bound sits within about 4 standard errors, i.e. a few hundredths of sigma below
    assert (exact - cert.radius[0] < 0.05 * sigma * 4).all(), (cert.radius, exact)
    assert cert.set_radius[0] == cert.radius[0].min()
    # more draws: a tighter (larger) certificate, still below the exact radius
    small = certify(model, X, sigma=sigma, n0=200, n=500, alpha=0.001, generator=torch.Generator().manual_seed(0),
                    progress=False)
    assert (small.radius[0] < cert.radius[0]).all()


def test_radius_is_sigma_times_inverse_normal_of_the_bound():
    cert = certificate_from_counts(torch.tensor([[90, 10, 50]]), torch.tensor([[950, 20, 500]]), n0=100, n=1000,
                                   sigma=0.5, alpha=0.01)
    assert cert.prediction.tolist() == [[True, False, False]]  # a tie (50 of 100) counts as negative
    # agreements 950, 980 (negatives), 500: the third label abstains (bound below 1/2)
    want = [float(clopper_pearson_lower(k, 1000, 0.01 / 3)) for k in (950, 980, 500)]
    assert torch.allclose(cert.p_lower[0], torch.tensor(want, dtype=torch.float64))
    assert cert.abstain.tolist() == [[False, False, True]]
    assert math.isclose(float(cert.radius[0, 0]), 0.5 * norm.ppf(want[0]))
    assert math.isnan(float(cert.radius[0, 2])) and math.isnan(float(cert.set_radius[0]))
    assert not bool(cert.certified[0])


def test_clopper_pearson_closed_forms_and_coverage():
    # all n agree: the bound solves p^n = alpha; none agree: 0
    assert math.isclose(float(clopper_pearson_lower(100, 100, 0.05)), 0.05 ** (1 / 100))
    assert float(clopper_pearson_lower(0, 100, 0.05)) == 0.0
    # seeded repeated check: the lower bound is never above the true probability at alpha = 1e-5 (900 draws:
    # a chance exceedance has probability below 0.01),
    # and at alpha = 0.2 it is above in at most about a fifth of the draws (a valid, not a vacuous, bound)
    g = torch.Generator().manual_seed(0)
    for p in (0.55, 0.8, 0.97):
        k = (torch.rand(300, 200, generator=g) < p).sum(1)  # 300 binomial draws, n = 200
        assert (clopper_pearson_lower(k, 200, 1e-5) <= p).all()
        above = float((clopper_pearson_lower(k, 200, 0.2) > p).mean())
        assert 0.05 < above <= 0.27, (p, above)


def test_repeated_certificates_never_exceed_the_exact_radius():
    sigma = 0.5
    model, exact, _ = _model(sigma)
    g = torch.Generator().manual_seed(1)
    x = X.repeat(60, 1, 1, 1)  # 60 independent certificates of the same image in one batch
    cert = certify(model, x, sigma=sigma, n0=50, n=300, alpha=0.01, generator=g, progress=False)
    ok = cert.abstain | (cert.radius <= exact[None, :])
    assert ok.all()
    assert (~cert.abstain[:, 0]).all()  # the clear label is always certified


def test_noise_counts_follow_the_probability_and_the_generator():
    sigma = 0.25
    model, _, p_true = _model(sigma)
    c1 = noise_counts(model, X, sigma=sigma, n=4000, batch_size=512, generator=torch.Generator().manual_seed(3),
                      progress=False)
    c2 = noise_counts(model, X, sigma=sigma, n=4000, batch_size=512, generator=torch.Generator().manual_seed(3),
                      progress=False)
    assert torch.equal(c1, c2) and c1.dtype == torch.int64
    positive = torch.tensor([p_true[0], 1 - p_true[1], p_true[2]])
    assert torch.allclose(c1[0].double() / 4000, positive, atol=0.03)


def test_certified_accuracy_counts_whole_label_sets():
    sel = torch.tensor([[100, 0], [100, 0], [100, 100], [0, 100]])
    est = torch.tensor([[1000, 0], [1000, 400], [1000, 1000], [0, 1000]])
    cert = certificate_from_counts(sel, est, n0=100, n=1000, sigma=1.0, alpha=0.001)
    y = torch.tensor([[True, False], [True, False], [True, False], [False, True]])
    acc = certified_accuracy(cert, y, [0.0, 0.1, 5.0])
    # image 0 certified and correct; 1 certified at a smaller radius (600 of 1000 agree); 2 wrong; 3 correct
    r1 = float(cert.set_radius[1])
    assert 0 < r1 < float(cert.set_radius[0]) < 5
    assert acc.tolist() == [0.75, 0.75 if r1 >= 0.1 else 0.5, 0.0]
    with pytest.raises(ValueError, match="rows"):
        certified_accuracy(cert, y[:2], [0.0])
    sub = cert.select(torch.tensor([3, 1]))
    assert torch.equal(sub.radius, cert.radius[[3, 1]]) and sub.n == 1000 and sub.sigma == 1.0
    assert certified_accuracy(sub, y[[3, 1]], [0.0]).tolist() == [1.0]


def test_check_certificate_flags_changes_inside_the_radius_only():
    cert = certificate_from_counts(torch.tensor([[100, 0]]), torch.tensor([[1000, 0]]), n0=100, n=1000, sigma=0.1,
                                   alpha=0.001)
    flipped = certificate_from_counts(torch.tensor([[0, 0]]), torch.tensor([[0, 0]]), n0=100, n=1000, sigma=0.1,
                                      alpha=0.001)
    x = torch.zeros(1, 1, 2, 2)
    r = float(cert.radius[0, 0])
    near, far = x.clone(), x.clone()
    near[0, 0, 0, 0], far[0, 0, 0, 0] = r / 2, 2 * r  # r is about 0.24
    inside = check_certificate(cert, flipped, x, near)
    assert inside["changed"].tolist() == [[True, False]] and inside["violation"].tolist() == [[True, False]]
    assert math.isclose(float(inside["ratio"][0]), 0.5, rel_tol=1e-6)
    outside = check_certificate(cert, flipped, x, far)
    assert not outside["violation"].any() and float(outside["ratio"][0]) > 1
    same = check_certificate(cert, cert, x, near)
    assert not same["changed"].any() and math.isinf(float(same["ratio"][0]))


def test_smoothed_model_estimates_the_expectation_and_has_a_gradient():
    sigma = 0.25
    model, _, _ = _model(sigma)
    smooth = SmoothedModel(model, sigma, n_samples=4000, generator=torch.Generator().manual_seed(0)).eval()
    x = X.clone().requires_grad_(True)
    z = smooth(x)
    assert z.shape == (1, 3)
    assert (z[0] > 0).tolist() == [True, False, True]
    # E[sigmoid(a + s e)] with a = model logit, s = sigma ||w||: a 1-D integral, by quadrature
    a = model(X)[0].double()
    s = sigma * torch.tensor(W).norm(dim=1).double()
    e = torch.linspace(-8, 8, 4001, dtype=torch.float64)
    dens = torch.exp(-e ** 2 / 2) / math.sqrt(2 * math.pi) * (e[1] - e[0])
    want = (torch.sigmoid(a[:, None] + s[:, None] * e[None, :]) * dens).sum(1)
    assert torch.allclose(torch.sigmoid(z[0].double()), want, atol=0.01)
    z.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert not smooth.training and "sigma=0.25" in repr(smooth)


def test_bad_inputs_raise_clear_errors():
    model, _, _ = _model(0.25)
    with pytest.raises(ValueError, match="sigma"):
        certify(model, X, sigma=0.0, progress=False)
    with pytest.raises(ValueError, match="alpha"):
        certify(model, X, sigma=0.25, alpha=1.0, progress=False)
    with pytest.raises(ValueError, match="n0"):
        certify(model, X, sigma=0.25, n0=0, progress=False)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        certify(model, X + 2, sigma=0.25, progress=False)
    with pytest.raises(ValueError, match="eval"):
        certify(Linear(W, [0, 0, 0]).train(), X, sigma=0.25, progress=False)
    with pytest.raises(ValueError, match="k must lie"):
        clopper_pearson_lower(11, 10, 0.05)
    with pytest.raises(ValueError, match=r"\(N, L\)"):
        certificate_from_counts(torch.zeros(2, 3), torch.zeros(2, 2), n0=10, n=10, sigma=1.0, alpha=0.1)
    with pytest.raises(TypeError, match="nn.Module"):
        SmoothedModel(lambda t: t, 0.25)
    with pytest.raises(ValueError, match="n_samples"):
        SmoothedModel(model, 0.25, n_samples=0)
    assert isinstance(Certificate, type)


@pytest.mark.unit
def test_counts_outside_their_draws_are_refused():
    """Swapped n0 and n (or float counts) would give a certificate of the wrong draws without this check."""
    with pytest.raises(ValueError, match=r"counts_selection must hold integer counts in \[0, 10\].*n0 \(10\)"):
        certificate_from_counts(torch.tensor([[200]]), torch.tensor([[5]]), n0=10, n=100, sigma=0.5, alpha=0.01)
    with pytest.raises(ValueError, match="counts_estimation must hold integer counts"):
        certificate_from_counts(torch.tensor([[5]]), torch.tensor([[5.0]]), n0=10, n=100, sigma=0.5, alpha=0.01)
    certificate_from_counts(torch.tensor([[10]]), torch.tensor([[100]]), n0=10, n=100, sigma=0.5, alpha=0.01)
