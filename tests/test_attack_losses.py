"""Loss terms of the attacks against values computed by hand (mlnb.attacks.losses)."""
import math

import pytest
import torch

from mlnb.attacks.losses import cw_hinge, rank_loss, rank_terms
from mlnb.attacks.rank import RANKING_SETS, ranking_sets
from mlnb.labels import kendall_criterion
from mlnb.metrics import tau_b_kernel as kendall_tau_b
from mlnb.target import Target

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_thread")]

E = math.exp
RANK1 = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0])
RANK2 = torch.ones(5)


def _b(*rows):
    return torch.tensor(rows, dtype=torch.bool)


def _logit(probs):
    """The logits of hand-picked probabilities (the kernels take logits)."""
    return torch.logit(torch.as_tensor(probs, dtype=torch.float64))


def _terms(probs, y, A, B, omega_zero="C", **kw):
    m = ranking_sets(Target(y, A, B), omega_zero)
    return rank_terms(_logit(probs), *(m[k] for k in RANKING_SETS), **kw)


def test_paper_counter_example_rank1_zero_rank2_not():
    # Sec. III-C2: labels [-1, 1, 1], target [-1, -1, 1], scores [0.01, 0.98, 0.99]
    y = _b([False, True, True])
    A = _b([False, True, False])  # label 1 flips 1 -> -1
    B = ~A
    probs = torch.tensor([[0.01, 0.98, 0.99]])
    t = _terms(probs, y, A, B)
    assert rank_loss(t, RANK1).item() == 0.0  # Rank I suffers no loss: max_{Ω-} 0.98 < min_{Ω+} 0.99
    # Rank II's first Eq. (10) term: A1 = {1} must rank below B-1 = {0}
    assert t[0, 3].item() == pytest.approx(E(0.98) - E(0.01), rel=1e-6)
    assert t[0, 4].item() == 0.0  # A-1 is empty: the second term is nonexistent
    assert rank_loss(t, RANK2).item() == pytest.approx(E(0.98) - E(0.01), rel=1e-6)


def test_rank_terms_by_hand():
    # y = [1, 0, 1, 0, 1], A = {0, 1}, B = {2, 3}, C = {4}
    y = _b([True, False, True, False, True])
    A = _b([True, True, False, False, False])
    B = _b([False, False, True, True, False])
    p = torch.tensor([[0.9, 0.2, 0.6, 0.3, 0.5]])
    # Ω- = A1 ∪ B-1 = {0, 3}; Ω+ = A-1 ∪ B1 = {1, 2}; Ω◦ = C = {4}
    t = _terms(p, y, A, B)[0]
    assert t[0].item() == pytest.approx(E(0.9) - E(0.2), rel=1e-6)
    assert t[1].item() == pytest.approx(E(0.9) - E(0.5), rel=1e-6)
    assert t[2].item() == pytest.approx(E(0.5) - E(0.2), rel=1e-6)
    assert t[3].item() == pytest.approx(E(0.9) - E(0.3), rel=1e-6)  # A1={0} vs B-1={3}
    assert t[4].item() == pytest.approx(max(0, E(0.6) - E(0.2)), rel=1e-6)  # B1={2} vs A-1={1}
    # pairwise (Eq. 8): mean over Ω- x Ω+ = {(0,1), (0,2), (3,1), (3,2)}
    tp = _terms(p, y, A, B, pairwise=True)[0]
    pairs = [E(0.9) - E(0.2), E(0.9) - E(0.6), E(0.3) - E(0.2), max(0, E(0.3) - E(0.6))]
    assert tp[0].item() == pytest.approx(sum(pairs) / 4, rel=1e-6)
    # hard threshold replaces f_γ by 0.5: Ω- above 0.5 and Ω+ below 0.5 are penalised
    th = _terms(p, y, A, B, threshold=0.5)[0]
    assert th[1].item() == pytest.approx(E(0.9) - E(0.5), rel=1e-6)
    assert th[2].item() == pytest.approx(E(0.5) - E(0.2), rel=1e-6)
    # Ω◦ = C1 = {4}; Ω◦ = empty: the last two Eq. (9) terms vanish
    te = _terms(p, y, A, B, omega_zero="empty")[0]
    assert te[1].item() == 0.0 and te[2].item() == 0.0 and te[0].item() > 0


@pytest.mark.parametrize("pairwise", [False, True])
def test_empty_sets_contribute_zero_with_finite_grads(pairwise):
    # extreme case: A = L, B = ∅ -> B-1, B1, C empty; and an image whose labels are all positive
    y = _b([True, True, True], [True, False, False])
    A = torch.ones_like(y)
    B = torch.zeros_like(y)
    p = _logit([[0.7, 0.8, 0.9], [0.9, 0.6, 0.7]]).requires_grad_(True)
    m = ranking_sets(Target(y, A, B), "C")
    t = rank_terms(p, m["omega_minus"], m["omega_plus"], m["omega_zero"], m["A1"], m["Bm1"], m["B1"], m["Am1"],
                   pairwise=pairwise)
    assert torch.isfinite(t).all()
    assert t[0].eq(0).all()  # first image: Ω+ = ∅, Ω◦ = ∅, B-1 = ∅, A-1 = ∅ -> every term 0
    # second image: Ω- = A1 = {0}, Ω+ = A-1 = {1, 2}: 0.9 above 0.6 is penalised
    assert t[1, 0] > 0
    rank_loss(t, RANK2).sum().backward()
    assert torch.isfinite(p.grad).all()
    assert p.grad[0].eq(0).all()


def test_cw_hinge_by_hand():
    y = _b([True, False, True])
    A = _b([True, False, False])
    B = _b([False, True, False])
    target, ab = y ^ A, A | B
    z = _logit([[0.8, 0.6, 0.1]])
    # label 0 must drop below 0.5 (0.8 -> 0.3 over), label 1 must stay below (0.6 -> 0.1 over); 2 in C
    assert cw_hinge(z, target, ab).item() == pytest.approx(0.3 + 0.1, rel=1e-12)
    assert cw_hinge(z, target, ab, kappa=0.05).item() == pytest.approx(0.35 + 0.15, rel=1e-12)
    goal = Target(y, A, B)
    assert goal.n_satisfied(z).item() == 0
    q = _logit([[0.5, 0.49, 0.9]])  # 0.5 (logit 0) counts as positive
    assert goal.constraints_met(q).tolist() == [[False, True, False]]
    # the logit-space extension: max(0, kappa - s z)
    want = float(z[0, 0]) + float(z[0, 1])
    assert cw_hinge(z, target, ab, space="logit").item() == pytest.approx(want, rel=1e-12)


def test_kendall_tau_b_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    s = torch.rand(6, 7, generator=g)
    s[0, :3] = 0.5  # ties in the scores
    t = torch.randint(-2, 3, (6, 7), generator=g)
    got = kendall_tau_b(s, t)
    for i in range(6):
        want = scipy_stats.kendalltau(s[i].numpy(), t[i].numpy()).statistic
        assert got[i].item() == pytest.approx(want, abs=1e-6)
    assert torch.isnan(kendall_tau_b(s[:1], torch.zeros(1, 7))).all()


def test_kendall_criterion_order_perfect():
    y = _b([True, False, True, False, True])
    A = _b([True, True, False, False, False])
    B = _b([False, False, True, True, False])
    yt = kendall_criterion(y, A, B)  # A1 -2, A-1 2, B1 1, B-1 -1, C 0
    assert yt.tolist() == [[-2, 2, 1, -1, 0]]
    assert kendall_tau_b(yt.float(), yt).item() == pytest.approx(1.0)


@pytest.mark.parametrize("pairwise", [False, True])
@pytest.mark.parametrize("threshold", [None, 0.35])
@pytest.mark.parametrize("omega_zero", ["C", "C1", "empty"])
def test_rank_step_equals_the_three_public_functions(pairwise, threshold, omega_zero):
    """The driver's one-pass step (sets prepared once, extremes taken once) gives, to the bit, what
    rank_terms / rank_goal / rank_progress give, hinge and gradient included (the max/min form's gradient
    written out by hand, vjp, with a per-image λ as the driver passes it)."""
    from mlnb.attacks.losses import rank_goal, rank_progress, rank_sets, rank_step

    g = torch.Generator().manual_seed(3)
    y = torch.rand(6, 7, generator=g) < 0.5
    A = torch.zeros(6, 7, dtype=torch.bool)
    A[torch.arange(6), torch.randint(0, 7, (6,), generator=g)] = True
    B = ~A & (torch.rand(6, 7, generator=g) < 0.6)
    B[0] = False  # an image with an empty B: terms 3 and 4 vanish
    sets = tuple(ranking_sets(Target(y, A, B), omega_zero)[k] for k in RANKING_SETS)
    z = (torch.randn(6, 7, generator=g) * 8).requires_grad_(True)
    z.data[1, 2] = z.data[1, 3]  # a tie: the max / min splits its gradient
    lam = torch.rand(6, generator=g, dtype=torch.float64) * 100
    for w in (RANK1, RANK2):
        want_h = rank_loss(rank_terms(z, *sets, pairwise=pairwise, threshold=threshold), w)
        (want_g,) = torch.autograd.grad((lam * want_h).sum(), z)
        h, goal, progress, vjp = rank_step(z, rank_sets(*sets, threshold=threshold), w, pairwise=pairwise,
                                           threshold=threshold)
        assert (vjp is None) == pairwise and h.requires_grad == pairwise
        got_g = torch.autograd.grad((lam * h).sum(), z)[0] if pairwise else vjp(lam)
        assert torch.equal(h, want_h) and torch.equal(got_g.view(torch.int32), want_g.view(torch.int32))
        assert torch.equal(goal, rank_goal(z, *sets, w, threshold=threshold))
        assert torch.equal(progress(), rank_progress(z, *sets, w, threshold=threshold))
