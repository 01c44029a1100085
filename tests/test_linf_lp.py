"""The batched dual simplex of MLA-LP's L∞-minimal step (mlnb.attacks.linf_lp) against HiGHS on random LPs of
every shape the attack produces (1-20 rows, 1-300 pixels, dead pixels, proportional columns and rows, integer
ties, infeasible LPs), its certificate, its per-image independence and its fallback to HiGHS."""
import numpy as np
import pytest
import torch

from mlnb.attacks.linf_lp import (LPSteps, certified, highs_step, prepare, simplex_steps, solve_steps)

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_thread")]


def random_lps(seed: int, n: int = 6):
    """``n`` LPs of one random shape and kind: ``grad`` ``(n, K, d)``, ``rhs`` ``(n, K)``, ``rows`` ``(n, K)``."""
    g = torch.Generator().manual_seed(seed)
    K, d = int(torch.randint(1, 21, (1,), generator=g)), int(torch.randint(1, 300, (1,), generator=g))
    grad = torch.randn(n, K, d, generator=g, dtype=torch.float64)
    kind = seed % 5
    if kind == 1:
        grad[:, :, : d // 2] = 0  # pixels no row reads
    if kind == 2 and d > 3:
        grad[:, :, 1], grad[:, :, 2] = 2 * grad[:, :, 0], -grad[:, :, 0]  # proportional columns: several optima
    if kind == 3 and K > 1:
        grad[:, 1] = 3 * grad[:, 0]  # proportional rows
    if kind == 4:
        grad = grad.round()  # integer entries: ties everywhere
    size = float(torch.rand(1, generator=g))  # small: easy LPs; large: some need |r| > 1 (infeasible)
    rhs = (torch.rand(n, K, generator=g, dtype=torch.float64) * 1.6 - 1.0) * grad.abs().sum(2) * size
    return grad, rhs, torch.rand(n, K, generator=g) < 0.8


@pytest.mark.parametrize("seed", range(60))
def test_simplex_matches_highs_on_random_lps(seed):
    G, b, todo, _ = prepare(*random_lps(seed))
    r, status, y, _ = simplex_steps(G, b)
    ok = certified(G, b, r, y)
    for i in todo.nonzero().flatten().tolist():
        ref = highs_step(G[i].numpy(), b[i].numpy())
        if ref is None:
            assert status[i] == 1, "HiGHS finds the LP infeasible: so must the simplex"
            continue
        assert status[i] == 0 and ok[i]
        t_ref, t = np.abs(ref).max(), r[i].abs().max().item()
        assert t == pytest.approx(t_ref, rel=1e-8, abs=1e-15)
        assert (G[i] @ r[i] <= b[i] + 1e-9 * b[i].abs().clamp(min=1)).all()


def test_certificate_rejects_a_step_that_is_not_optimal_or_not_feasible():
    G, b, todo, _ = prepare(*random_lps(5))
    r, status, y, _ = simplex_steps(G, b)
    i = int((todo & (status == 0)).nonzero()[0])
    assert certified(G[i:i + 1], b[i:i + 1], r[i:i + 1], y[i:i + 1]).item()
    assert not certified(G[i:i + 1], b[i:i + 1], 1.01 * r[i:i + 1], y[i:i + 1]).item()  # feasible, not minimal
    assert not certified(G[i:i + 1], b[i:i + 1], 0.99 * r[i:i + 1], y[i:i + 1]).item()  # violates a binding row


def test_batched_pivots_are_each_images_own():
    G, b, todo, _ = prepare(*random_lps(7, n=8))
    r, status, y, pivots = simplex_steps(G, b)
    for i in range(8):
        r1, s1, _, p1 = simplex_steps(G[i:i + 1], b[i:i + 1])
        assert s1.item() == status[i].item() and p1.item() == pivots[i].item()
        # a batch's matrix products may round the last bits differently (BLAS blocking), never the vertex
        assert torch.allclose(r1[0], r[i], rtol=0, atol=1e-12)


def test_one_row_has_the_closed_form_and_dead_pixels_stay_still():
    a = torch.tensor([[[1.0, -2.0, 0.5, 0.0]]], dtype=torch.float64)
    b = torch.tensor([[-0.7]], dtype=torch.float64)
    r, status, _, pivots = simplex_steps(*prepare(a, b, torch.tensor([[True]]))[:2])
    assert status.item() == 0 and pivots.item() == 1
    assert torch.allclose(r[0], torch.tensor([-0.2, 0.2, -0.2, 0.0], dtype=torch.float64), atol=1e-12)


def test_iteration_cap_hands_the_lp_to_highs(monkeypatch):
    grad, rhs, rows = random_lps(10)
    full = solve_steps(grad, rhs, rows)
    assert isinstance(full, LPSteps) and not full.by_highs.any()
    import mlnb.attacks.linf_lp as L
    monkeypatch.setattr(L, "MAX_PIVOTS_PER_ROW", 0)  # at most 10 pivots: some of these LPs need more
    capped = solve_steps(grad, rhs, rows)
    assert capped.by_highs.any()
    assert torch.equal(capped.failed, full.failed)
    assert torch.allclose(capped.step.abs().amax(1), full.step.abs().amax(1), rtol=1e-8)


def test_an_infeasible_lp_fails_with_both_solvers():
    # one row asks for a drop of 5 with ||g||_1 = 2: no step with |r| <= 1 does it
    grad = torch.tensor([[[1.0, -1.0, 0.0]]], dtype=torch.float64)
    rhs = torch.tensor([[-5.0]], dtype=torch.float64)
    for solver in ("simplex", "highs"):
        out = solve_steps(grad, rhs, torch.tensor([[True]]), solver)
        assert out.failed.tolist() == [True] and out.step.abs().max().item() == 0.0
