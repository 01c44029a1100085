"""ML-DP in the paper's form (Algorithm 1, Eq. 6-7 as printed) beside mlnb's greedy form, and the
minimum-norm solver both share.

Most checks use a linear model ``logits = W vec(x) + b`` on 1x2x2 images (d = 4), where the paper's
step has a closed form: the minimum-norm solution of ``σ'(z_k) W_k Δr = 0.5 - F_k`` for every label of
``A ∪ B``. For a linear model each label then lands at ``z_k + (0.5 - F_k) / σ'(z_k)`` exactly: a Newton
step on the sigmoid, which always overshoots the threshold, so every label of ``A ∪ B`` flips sign.
"""
import numpy as np
import pytest
import torch

from mlnb import attacks
from mlnb.attacks.deepfool import ML_DP_FORMS, greedy_step, min_norm_step, paper_step
from mlnb.labels import random_case

from linear_model import Linear

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_thread")]

# generic (correlated) rows, scaled so that one paper step stays inside the [0, 1] box from x = 0.5
W_GEN = [[3.77, -3.96, 19.21, 3.15], [-16.07, 10.85, 39.12, 28.41], [-21.11, -37.96, -18.70, 1.24]]
Z_GEN = [1.2, -0.8, 0.6]  # logits at x = 0.5: y = [1, 0, 1]


def _linear(W, z0):
    """Model with logits ``z0`` at the grey image ``x = 0.5`` and rows ``W``."""
    W = torch.tensor(W, dtype=torch.float32)
    x = torch.full((1, 1, 2, 2), 0.5)
    model = Linear(W, torch.tensor(z0, dtype=torch.float32) - W.sum(1) * 0.5).eval()
    with torch.no_grad():
        z = model(x)
    return model, x, z


def _paper_reference(W, z):
    """Closed-form minimum-norm Δr of the linearised probability equalities, float64 numpy lstsq."""
    W, z = np.asarray(W, dtype=np.float64), np.asarray(z, dtype=np.float64)
    e = np.exp(-np.abs(z))
    M = (e / (1 + e) ** 2)[:, None] * W
    q = 0.5 - 1 / (1 + np.exp(-z))
    return np.linalg.lstsq(M, q, rcond=None)[0]


def _old_solver(M, rhs):
    """The former solver: pinv of the Gram matrix P^T P with rtol 1e-6 (1e-3 on P's singular values)."""
    G = M @ M.transpose(1, 2)
    return (M.transpose(1, 2) @ (torch.linalg.pinv(G, rtol=1e-6, hermitian=True) @ rhs[:, :, None])).squeeze(2)


# ----------------------------------------------------------------------------- (1) closed form
def test_paper_first_step_is_min_norm_solution_of_linearised_probability_equalities():
    model, x, z = _linear(W_GEN, Z_GEN)
    y = z >= 0
    A = torch.tensor([[True, True, False]])
    B = ~A
    r_ref = _paper_reference(model.W.detach(), z[0])
    assert np.abs(r_ref).max() < 0.45  # x + r stays in the box: no clipping in this check
    x1 = x + torch.tensor(r_ref, dtype=torch.float32).view_as(x)
    with torch.no_grad():
        z1 = model(x1)[0]
    assert ((z1 >= 0) != y[0]).all()  # Newton on the sigmoid: every label crossed, so x1 beats x (2 > 1)
    # max_iter=0: "while i <= maxiter" runs one step; the returned x* is x_1 (line 13 read as x_{i+1})
    res = attacks.ml_dp(model, x, y, A, B, max_iter=0, form="paper", progress=False)
    assert res.iterations.item() == 1 and res.n_satisfied.item() == 2
    r = (res.x_adv - x).flatten().double().numpy()
    np.testing.assert_allclose(r, r_ref, rtol=0, atol=3e-7)  # float32 x + Δr; overshoot is 0 by default
    # the kernel's step itself, in float64, against lstsq
    J = model.W.detach()[None].clone()
    step = paper_step(J, z, torch.ones(1, 3, dtype=torch.bool))[0].numpy()
    np.testing.assert_allclose(step, r_ref, rtol=1e-10, atol=0)


# ----------------------------------------------------------------------------- (2) B labels
def test_paper_drags_a_satisfied_B_label_to_the_threshold_greedy_leaves_it():
    # orthogonal rows: label 2 (kept, logit 0.5, satisfied) does not share pixels with labels 0, 1
    W = [[4.0, 0, 0, 0], [0, 4.0, 0, 0], [0, 0, 3.0, 3.0]]
    model, x, z = _linear(W, [0.8, -0.6, 0.5])
    y = z >= 0
    A = torch.tensor([[True, True, False]])
    B = ~A
    F_B = torch.sigmoid(z[0, 2]).item()
    paper = attacks.ml_dp(model, x, y, A, B, max_iter=0, form="paper", progress=False)
    greedy = attacks.ml_dp(model, x, y, A, B, max_iter=1, form="greedy", progress=False)
    assert paper.iterations.item() == 1 and greedy.iterations.item() == 1
    assert (paper.x_adv != x).any() and greedy.success.item()
    # paper: the B label's probability moved toward 0.5 (0.62 -> ~0.495: Newton lands just past it)
    F_paper = torch.sigmoid(paper.logits[0, 2]).item()
    assert abs(F_paper - 0.5) < 0.1 * abs(F_B - 0.5)
    assert paper.logits[0, 2] < z[0, 2]
    # greedy: the satisfied B label is not in P; orthogonal rows leave its logit exactly alone
    assert greedy.logits[0, 2].item() == pytest.approx(z[0, 2].item(), abs=1e-6)
    # the step itself: the paper's linearised probability of the B label is driven to exactly 0.5
    J, ab = model.W.detach()[None].clone(), torch.ones(1, 3, dtype=torch.bool)
    F64 = torch.sigmoid(z[0, 2].double()).item()
    step = paper_step(J, z, ab)[0]
    assert F64 + F64 * (1 - F64) * (J[0, 2].double() @ step).item() == pytest.approx(0.5, abs=1e-12)
    viol = torch.tensor([[True, True, False]])
    assert (J[0, 2].double() @ greedy_step(J, z, y ^ A, viol)[0]).item() == 0.0


# ----------------------------------------------------------------------------- (3) saturation
def test_paper_moves_a_saturated_label():
    z = torch.tensor([[20.0]])
    p = torch.sigmoid(z)
    assert (p * (1 - p)).item() == 0.0  # the float32 p(1-p) derivative: no step at all
    w = torch.tensor([[[1.0, 2.0, -1.0, 0.5]]])
    step = paper_step(w, z, torch.ones(1, 1, dtype=torch.bool))[0]
    e = np.exp(-20.0)
    expect = -0.5 * np.tanh(10.0) / (e / (1 + e) ** 2) * w[0, 0].double().numpy() / float(w.double().norm() ** 2)
    assert torch.isfinite(step).all() and step.abs().max() > 1e6
    np.testing.assert_allclose(step.numpy(), expect, rtol=1e-10)
    # end to end: logit 19.9 in A; the step (~1e8) runs into the box corner x = 0, where the logit is -0.1
    model, x, z0 = _linear([[10.0, 10.0, 10.0, 10.0]], [19.9])
    y = z0 >= 0
    res = attacks.ml_dp(model, x, y, y.clone(), torch.zeros_like(y), max_iter=2, form="paper", progress=False)
    assert res.success.item() and torch.equal(res.x_adv, torch.zeros_like(x))
    # absurd logits: σ'(500) ~ 1e-217 (a step beyond float32, clamped to its max, never NaN), σ'(800) = 0
    model, x, z0 = _linear([[1.0, 2.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0], [1.0, -1.0, 1.0, 0.0]], [500.0, -800.0, 1.0])
    y = z0 >= 0
    A = torch.tensor([[True, True, False]])
    res = attacks.ml_dp(model, x, y, A, ~A, max_iter=3, form="paper", progress=False)
    assert torch.isfinite(res.x_adv).all() and torch.isfinite(res.logits).all()


# ----------------------------------------------------------------------------- (4) batching
def _small_model(L=5):
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.Tanh(), torch.nn.AdaptiveAvgPool2d(2),
                            torch.nn.Flatten(), torch.nn.Linear(24, L))
    with torch.no_grad():
        m[0].weight.mul_(4)
        m[4].weight.mul_(4)
    return m.eval()


def test_paper_batch_equals_one_by_one():
    model = _small_model()
    x = torch.rand(10, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x) >= 0
    t = random_case(y, torch.Generator().manual_seed(2))
    x, y, A, B = x[t.eligible][:4], y[t.eligible][:4], t.A[t.eligible][:4], t.B[t.eligible][:4]
    with torch.no_grad():  # image 3 already in its target state: it leaves the batch at once
        y[3] = (model(x[3:4])[0] >= 0) ^ A[3]
    kw = {"max_iter": 3, "form": "paper", "progress": False}
    whole = attacks.ml_dp(model, x, y, A, B, **kw)
    assert whole.iterations.tolist()[3] == 0 and torch.equal(whole.x_adv[3], x[3])
    assert (whole.iterations[:3] == 4).all()  # max_iter + 1 steps, no early stop
    for i in range(4):
        one = attacks.ml_dp(model, x[i:i + 1], y[i:i + 1], A[i:i + 1], B[i:i + 1], **kw)
        assert torch.allclose(one.x_adv, whole.x_adv[i:i + 1], rtol=0, atol=1e-6), i
        assert one.iterations.item() == whole.iterations[i].item()
        assert one.n_satisfied.item() == whole.n_satisfied[i].item()
    chunked = attacks.ml_dp(model, x, y, A, B, batch_size=3, **kw)
    assert torch.allclose(chunked.x_adv, whole.x_adv, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- (5) collinear rows
@pytest.mark.parametrize("kind", ["greedy", "paper"])
def test_nearly_collinear_constraints_are_both_honoured(kind):
    c = 0.99999
    u = torch.tensor([1.0, 0.0, 0.0, 0.0])
    v = torch.tensor([c, (1 - c * c) ** 0.5, 0.0, 0.0])
    J = torch.stack([u, 10 * v])[None]  # (1, 2, 4): cosine 0.99999, norms 1 and 10
    cos = (J[0, 0] @ J[0, 1] / J[0].norm(dim=1).prod()).item()
    assert cos == pytest.approx(c, abs=1e-7)
    logits = torch.tensor([[-0.3, -2.0]])
    ab = torch.ones(1, 2, dtype=torch.bool)
    if kind == "greedy":
        M, rhs = J.double(), -logits.double()
        step = greedy_step(J, logits, torch.ones_like(ab), ab)
    else:
        zz = logits.double()
        e = torch.exp(-zz.abs())
        M, rhs = J.double() * (e / (1 + e) ** 2)[:, :, None], -0.5 * torch.tanh(zz / 2)
        step = paper_step(J, logits, ab)
    resid = (M @ step[:, :, None]).squeeze(2) - rhs
    assert resid.abs().max().item() < 1e-9 * rhs.abs().max().item()
    old = _old_solver(M, rhs)  # the former tolerance drops the second direction: a constraint is missed
    assert ((M @ old[:, :, None]).squeeze(2) - rhs).abs().max().item() > 1e-2 * rhs.abs().max().item()


def test_zero_and_dependent_rows_give_finite_least_squares_steps():
    M = torch.zeros(2, 3, 5, dtype=torch.float64)
    M[1, 0, 0] = M[1, 1, 0] = 1.0  # image 1: two identical constraints with different targets
    rhs = torch.tensor([[1.0, -1.0, 0.5], [1.0, 3.0, 0.7]], dtype=torch.float64)  # row 2 of image 1 is empty
    step = min_norm_step(M, rhs)
    assert torch.equal(step[0], torch.zeros(5, dtype=torch.float64))  # all-zero Jacobian: Δr = 0
    assert step[1].tolist() == pytest.approx([2.0, 0, 0, 0, 0], abs=1e-12)  # least squares: the mean


@pytest.mark.parametrize("form", ML_DP_FORMS)
def test_constant_model_gives_the_clean_image_without_nan(form):
    model = Linear(torch.zeros(2, 4), torch.tensor([1.0, -1.0])).eval()
    x = torch.full((2, 1, 2, 2), 0.3)
    y = torch.tensor([[True, False], [True, False]])
    A = torch.tensor([[True, False], [True, True]])
    res = attacks.ml_dp(model, x, y, A, ~A, max_iter=3, form=form, progress=False)
    assert torch.equal(res.x_adv, x) and torch.isfinite(res.scores).all()
    assert res.iterations.tolist() == ([0, 0] if form == "paper" else [3, 3])  # paper: Δr = 0, nothing can change


# ----------------------------------------------------------------------------- readings of Algorithm 1
def test_paper_trajectory_and_best_iterate_follow_algorithm_1():
    """Readings pinned: ``x_{i+1} = clip(x + r_{i+1})``, ``r_{i+1} = r_i + Δr(x_i)`` (line 8), ``max_iter + 1``
    steps (line 4), ``x* = x`` to start (line 1), replaced by ``x_{i+1}`` (lines 13/15) on more
    constraints or as many with a strictly smaller perturbation ``||x_{i+1} - x||_2`` (line 14).

    One label on a linear model: the paper's step is Newton on the sigmoid, ``z <- z - sinh(z)``:
    2 -> -1.63 -> 0.82 -> -0.095 -> 1.4e-4. Flipping label 0 (target negative), x_1 and x_3 both
    satisfy it; x_3 is closer to x (|Δz| 2.09 against 3.63) and wins. Reading line 14 literally
    (``||x_i||_2`` of the images, both moved down from 0.5) would keep x_1."""
    model, x, z = _linear([[4.0, 4.0, 4.0, 4.0]], [2.0])
    y = z >= 0
    A, B = y.clone(), torch.zeros_like(y)
    W, b = model.W.detach().double().numpy(), model.b.detach().double().numpy()
    x0 = x.flatten().double().numpy()
    r, best, best_n, best_d, zs = np.zeros(4), x0, 0, 0.0, []
    max_iter = 3
    for _ in range(max_iter + 1):
        xi = np.clip(x0 + r, 0, 1)
        r = r + _paper_reference(W, W @ xi + b)
        xn = np.clip(x0 + r, 0, 1)
        zs.append(float((W @ xn + b)[0]))
        n, d = int(zs[-1] < 0), float(np.linalg.norm(xn - x0))
        if n > best_n or (n == best_n and d < best_d):
            best, best_n, best_d = xn, n, d
    newton = [2.0]
    for _ in range(max_iter + 1):
        newton.append(newton[-1] - np.sinh(newton[-1]))
    np.testing.assert_allclose(zs, newton[1:], rtol=1e-6)
    assert best_n == 1 and float((W @ best + b)[0]) == pytest.approx(zs[2])  # x_3 wins
    res = attacks.ml_dp(model, x, y, A, B, max_iter=max_iter, form="paper", progress=False)
    assert res.iterations.item() == max_iter + 1 and res.success.item()
    np.testing.assert_allclose(res.x_adv.flatten().double().numpy(), best, rtol=0, atol=1e-6)
    assert res.logits[0, 0].item() == pytest.approx(zs[2], abs=1e-4)


def test_paper_form_validation_and_defaults():
    model, x, z = _linear(W_GEN, Z_GEN)
    y = z >= 0
    A = torch.tensor([[True, False, False]])
    with pytest.raises(ValueError, match=r"form.*'greedy', 'paper'"):
        attacks.ml_dp(model, x, y, A, ~A, form="papr", progress=False)
    with pytest.raises(ValueError, match="max_iter"):  # greedy: at least one step
        attacks.ml_dp(model, x, y, A, ~A, max_iter=0, progress=False)
    attacks.check_params("ml_dp", {"form": "paper", "overshoot": 0.0})


# ----------------------------------------------------------------------------- found by the mutation sample
def test_a_zero_weight_row_is_left_out_not_kept_as_an_unweighted_constraint():
    """Row 2 (not orthogonal to row 1) has weight 0: the answer is row 1's alone, (1, 0), and not the
    solution that also keeps Δr orthogonal to row 2, (1, -1)."""
    M = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]], dtype=torch.float64)
    step = min_norm_step(M, torch.tensor([[1.0, 5.0]]), torch.tensor([[1.0, 0.0]]))
    assert torch.allclose(step, torch.tensor([[1.0, 0.0]], dtype=torch.float64), atol=1e-12)


def test_ml_dp_counts_iterations_as_integers_and_its_kernel_defaults_to_the_greedy_form():
    from mlnb.attacks._core import Runtime
    from mlnb.attacks.deepfool import deepfool
    from mlnb.target import Target

    model, x, _ = _linear(W_GEN, Z_GEN)
    y = torch.tensor([[True, False, True]])
    A, B = torch.tensor([[True, True, False]]), torch.tensor([[False, False, True]])
    res = attacks.ml_dp(model, x, y, A, B, progress=False)
    assert res.iterations.dtype == torch.int64 and int(res.iterations[0]) >= 1
    rt = Runtime(model, None, False, None)
    kw = dict(max_iter=5, overshoot=0.02, bar=type("Bar", (), {"update": lambda self, n: None})())
    goal = Target(y, A, B)
    default, greedy = deepfool(rt, x, goal, **kw), deepfool(rt, x, goal, form="greedy", **kw)
    assert default["iterations"].dtype == torch.int64
    assert torch.equal(default["x_adv"], greedy["x_adv"]) and torch.equal(default["iterations"], greedy["iterations"])
