"""MLA-LP (mlnb.attacks.mla_lp) on tiny linear models, where the L∞-minimal step of one linear
constraint is known in closed form: ``a^T r <= b`` with ``b < 0`` is met at least cost by
``r = (b / ||a||_1) sign(a)``, ``||r||_∞ = |b| / ||a||_1``."""
import warnings

import pytest
import torch
import torch.nn.functional as F

from mlnb.attacks.linf_lp import solve_steps
from mlnb.attacks.mla_lp import bce_rows, mla_lp

from linear_model import Linear

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_thread")]


W3 = [[1.0, -2.0, 0.5, 0.0], [0.0, 1.0, 1.0, -1.0], [0.5, 0.5, -1.0, 1.0]]


def _images(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 0.3 + 0.4 * torch.rand(n, 1, 2, 2, generator=g)


@pytest.mark.parametrize("solver", ["simplex", "highs"])
def test_one_constraint_closed_form(solver):
    a = torch.tensor([[[1.0, -2.0, 0.5, 0.0]]], dtype=torch.float64)
    b = torch.tensor([[-0.7]], dtype=torch.float64)
    r, failed, by_highs = solve_steps(a, b, torch.tensor([[True]]), solver)
    assert not by_highs.any()
    assert not failed.any()
    expected = -0.7 / 3.5 * torch.sign(a[0, 0])
    assert torch.allclose(r[0, :3], expected[:3], atol=1e-9)
    assert r[0].abs().max().item() == pytest.approx(0.2, abs=1e-9)
    assert (a[0, 0] @ r[0]).item() <= -0.7 + 1e-9


def test_satisfied_rows_give_no_step_and_bce_rows_are_exact():
    r, failed, _ = solve_steps(torch.ones(1, 1, 4, dtype=torch.float64), torch.tensor([[0.3]], dtype=torch.float64),
                            torch.tensor([[True]]))
    assert not failed.any() and r.abs().max().item() == 0.0
    z = torch.tensor([[-30.0, 2.0, 40.0]], dtype=torch.float64, requires_grad=True)
    ys = torch.tensor([[True, False, True]])
    J = torch.eye(3, dtype=torch.float64)[None]
    grad, rhs = bce_rows(z.detach(), J, ys, torch.full((1, 3), 0.5, dtype=torch.float64))
    loss = F.binary_cross_entropy_with_logits(z, ys.double(), reduction="none")
    (gz,) = torch.autograd.grad(loss.sum(), z)
    assert torch.allclose(grad[0].diagonal(), gz[0], rtol=1e-12)
    assert grad[0, 2, 2].item() < 0  # a saturated label keeps a true non-zero gradient (about -4e-18)
    assert torch.allclose(rhs, torch.log(torch.tensor(2.0, dtype=torch.float64)) - loss.detach())


@pytest.mark.parametrize("solver", ["simplex", "highs"])
def test_attack_meets_target_at_no_less_than_the_minimal_linf(solver):
    model = Linear(W3, [-0.3, 0.2, 0.1]).eval()
    x = _images(4)
    with torch.no_grad():
        z = model(x)
    y = z >= 0
    A = torch.zeros_like(y)
    A[:, 0] = True
    res = mla_lp(model, x, y, A, torch.zeros_like(y), max_iter=20, progress=False, solver=solver)
    assert res.success.all() and res.extras["lp_highs"].sum() == 0
    a1 = torch.tensor(W3[0]).abs().sum()
    # no step smaller than |z_0| / ||w_0||_1 in L∞ crosses the threshold (clipping only adds)
    assert (res.extras["linf"] >= z[:, 0].abs() / a1 - 1e-6).all()
    assert torch.allclose(res.extras["linf"], (res.x_adv - x).flatten(1).abs().amax(1))
    assert res.extras["n_lp_failed"] == 0 and res.param.isnan().all()
    assert res.x_adv.device == x.device and res.logits.shape == (4, 3)


def test_batch_equals_one_by_one():
    model = Linear(W3, [-0.3, 0.2, 0.1]).eval()
    x = _images(5, seed=1)
    with torch.no_grad():
        y = model(x) >= 0
    A = torch.zeros_like(y)
    A[:, 1] = True
    B = ~A
    full = mla_lp(model, x, y, A, B, max_iter=10, progress=False)  # the batched simplex (the default)
    # the solvers' LPs have the same optimal ||r||_∞ (tests/test_linf_lp.py); here they reach different optimal
    # vertices (pixel 0 inside the box for the simplex, at -t for HiGHS), so their paths differ: no equality asserted
    for i in range(5):
        one = mla_lp(model, x[i:i + 1], y[i:i + 1], A[i:i + 1], B[i:i + 1], max_iter=10, progress=False)
        assert torch.allclose(one.x_adv, full.x_adv[i:i + 1], atol=1e-6)
        assert one.success.item() == full.success[i].item()


@pytest.mark.parametrize("solver", ["simplex", "highs"])
def test_infeasible_lp_keeps_the_image_clean_and_names_it(solver):
    # label 2 cannot move (zero weights, logit -1): asking to show it is infeasible
    model = Linear([[1.0, -1.0, 0.5, 0.0], [0.0, 1.0, 1.0, -1.0], [0.0, 0.0, 0.0, 0.0]], [0.1, -0.2, -1.0]).eval()
    x = _images(3, seed=2)
    with torch.no_grad():
        y = model(x) >= 0
    A = torch.zeros_like(y)
    A[:, 0] = True
    A[1, 2] = True
    with pytest.warns(RuntimeWarning, match=r"image\(s\) \[1\]"):
        res = mla_lp(model, x, y, A, torch.zeros_like(y), max_iter=10, progress=False, solver=solver)
    assert res.extras["lp_failed"].tolist() == [False, True, False]
    assert res.extras["n_lp_failed"] == 1
    assert torch.equal(res.x_adv[1], x[1]) and not res.success[1]
    assert res.success[0] and res.success[2]


def test_bad_inputs_raise_clear_errors():
    model = Linear(W3, [-0.3, 0.2, 0.1]).eval()
    x = _images(2)
    y = torch.zeros(2, 3, dtype=torch.bool)
    A = torch.zeros_like(y)
    A[:, 0] = True
    with pytest.raises(ValueError, match="max_iter"):
        mla_lp(model, x, y, A, ~A, max_iter=0, progress=False)
    with pytest.raises(ValueError, match="solver"):
        mla_lp(model, x, y, A, ~A, solver="mosek", progress=False)
    with pytest.raises(ValueError):
        mla_lp(model, x, y, A, A, progress=False)  # A and B overlap
    with pytest.raises(TypeError):
        mla_lp(model, x, y, A, progress=False)  # B missing
