"""Behaviour of mlnb.attacks.losses that the other unit tests left unpinned (found by mutation
testing, docs/MUTATION.md): the hard threshold of Sec. III-A2 at a value other than 0.5 (pairwise
and max/min forms), rank_goal and rank_progress by hand, and images of one batch that do not share
their empty sets."""
from __future__ import annotations

import math

import pytest
import torch

from mlnb.attacks.losses import rank_goal, rank_loss, rank_progress, rank_terms
from mlnb.attacks.rank import RANKING_SETS, ranking_sets
from mlnb.target import Target

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_thread")]

E = math.exp
RANK1 = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0])
RANK2 = torch.ones(5)


def _b(*rows):
    return torch.tensor(rows, dtype=torch.bool)


def _logit(probs):
    return torch.logit(torch.as_tensor(probs, dtype=torch.float64))


def _masks(y, A, B, omega_zero="C"):
    """The ranking sets in the losses' argument order; an image with an empty A is marked ineligible (its
    sets are still formed: the losses must give it zero terms)."""
    m = ranking_sets(Target(y, A, B, eligible=A.any(1)), omega_zero)
    return tuple(m[k] for k in RANKING_SETS)


# y = [1, 0, 1, 0, 1], A = {0, 1}, B = {2, 3}, C = {4}:
# Ω- = A1 ∪ B-1 = {0, 3}; Ω+ = A-1 ∪ B1 = {1, 2}; Ω◦ = C = {4}; A1 = {0}, B-1 = {3}, B1 = {2}, A-1 = {1}
Y = _b([True, False, True, False, True])
A = _b([True, True, False, False, False])
B = _b([False, False, True, True, False])
P = [[0.9, 0.2, 0.6, 0.3, 0.5]]


def test_pairwise_hard_threshold_compares_every_label_with_the_threshold():
    t = 0.4
    terms = rank_terms(_logit(P), *_masks(Y, A, B), pairwise=True, threshold=t)[0]
    # term 1: mean over Ω- = {0.9, 0.3} of max(0, e^F - e^t); term 2: mean over Ω+ = {0.2, 0.6} of max(0, e^t - e^F)
    assert terms[1].item() == pytest.approx((E(0.9) - E(t) + 0.0) / 2, rel=1e-9)
    assert terms[2].item() == pytest.approx((E(t) - E(0.2) + 0.0) / 2, rel=1e-9)
    # the pairwise Eq. (8) term 0 and the Eq. (10) terms do not involve the threshold
    pairs = [E(0.9) - E(0.2), E(0.9) - E(0.6), E(0.3) - E(0.2), 0.0]
    assert terms[0].item() == pytest.approx(sum(pairs) / 4, rel=1e-9)
    assert terms[3].item() == pytest.approx(E(0.9) - E(0.3), rel=1e-9)
    assert terms[4].item() == pytest.approx(E(0.6) - E(0.2), rel=1e-9)


def test_pairwise_hard_threshold_ignores_omega_zero():
    base = rank_terms(_logit(P), *_masks(Y, A, B), pairwise=True, threshold=0.4)
    moved = _logit([[0.9, 0.2, 0.6, 0.3, 0.99]])  # only the Ω◦ label moves
    assert torch.equal(rank_terms(moved, *_masks(Y, A, B), pairwise=True, threshold=0.4), base)


def test_max_min_hard_threshold_other_than_one_half():
    t = 0.7
    terms = rank_terms(_logit(P), *_masks(Y, A, B), threshold=t)[0]
    assert terms[0].item() == pytest.approx(E(0.9) - E(0.2), rel=1e-9)  # max Ω- vs min Ω+
    assert terms[1].item() == pytest.approx(E(0.9) - E(t), rel=1e-9)  # max Ω- vs the threshold
    assert terms[2].item() == pytest.approx(E(t) - E(0.2), rel=1e-9)  # the threshold vs min Ω+
    assert terms[3].item() == pytest.approx(E(0.9) - E(0.3), rel=1e-9)  # A1 vs B-1: no threshold
    assert terms[4].item() == pytest.approx(E(0.6) - E(0.2), rel=1e-9)  # B1 vs A-1: no threshold


def test_hard_threshold_terms_are_zero_for_the_image_whose_side_is_empty():
    # image 0: every label negative, A = ∅ -> Ω+ = B1 ∪ A-1 = ∅; image 1: every label positive -> Ω- = ∅
    y = _b([False, False, False], [True, True, True])
    A = torch.zeros_like(y)
    B = torch.ones_like(y)
    z = _logit([[0.8, 0.1, 0.1], [0.2, 0.9, 0.9]])
    for pairwise in (False, True):
        lo_t = rank_terms(z, *_masks(y, A, B), threshold=0.3, pairwise=pairwise)
        hi_t = rank_terms(z, *_masks(y, A, B), threshold=0.7, pairwise=pairwise)
        # image 0 has Ω- = {0, 1, 2}: term 1 is live there; its Ω+ is empty: term 2 is 0
        assert lo_t[1, 1].item() == 0.0 and hi_t[1, 1].item() == 0.0
        assert hi_t[0, 2].item() == 0.0 and lo_t[0, 2].item() == 0.0
        assert lo_t[0, 1].item() > 0 and hi_t[1, 2].item() > 0


def test_rank_goal_per_image_and_only_for_weighted_terms():
    # image 0 meets Eq. (9) (Ω- below Ω◦ below Ω+) but not the first Eq. (10) constraint (A1 above B-1);
    # image 1 meets neither
    z = _logit([[0.4, 0.9, 0.8, 0.3, 0.5], [0.9, 0.2, 0.6, 0.3, 0.5]])
    m = _masks(Y.expand(2, -1), A.expand(2, -1), B.expand(2, -1))
    assert rank_goal(z, *m, RANK1).tolist() == [True, False]
    assert rank_goal(z, *m, RANK2).tolist() == [False, False]
    # only the Eq. (10) terms weighted: image 0 fails, and an image meeting them passes
    eq10 = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0])
    z2 = _logit([[0.3, 0.9, 0.8, 0.35, 0.5], [0.9, 0.2, 0.6, 0.3, 0.5]])
    assert rank_goal(z2, *m, eq10).tolist() == [True, False]
    assert rank_goal(z2, *m, torch.zeros(5)).tolist() == [True, True]


def test_rank_goal_with_a_hard_threshold():
    # Ω- = {0, 3} must be below t and Ω+ = {1, 2} above it; Ω◦ = {4} does not count
    m = _masks(Y, A, B)
    w = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.0])
    z = _logit([[0.35, 0.75, 0.65, 0.3, 0.99]])
    assert rank_goal(z, *m, w, threshold=0.6).tolist() == [True]
    assert rank_goal(z, *m, w, threshold=0.7).tolist() == [False]  # 0.65 of Ω+ is below 0.7
    assert rank_goal(z, *m, w, threshold=0.33).tolist() == [False]  # 0.35 of Ω- is above 0.33
    assert rank_goal(z, *m, w).tolist() == [False]  # soft middle: Ω◦ at 0.99 is above Ω+


def test_rank_progress_is_the_weighted_logit_hinge():
    z = _logit(P)
    zl = z[0].tolist()
    m = _masks(Y, A, B)
    want = [zl[0] - zl[1], zl[0] - zl[4], zl[4] - zl[1], zl[0] - zl[3], max(0.0, zl[2] - zl[1])]
    got = rank_progress(z, *m, RANK2)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(sum(want), rel=1e-12)
    w = torch.tensor([1.0, 2.0, 0.0, 0.5, 0.0])
    assert rank_progress(z, *m, w).item() == pytest.approx(want[0] + 2 * want[1] + 0.5 * want[3], rel=1e-12)
    # a hard threshold t stands in for Ω◦ in terms 1 and 2
    zt = math.log(0.7 / 0.3)
    want_t = [want[0], zl[0] - zt, zt - zl[1], want[3], want[4]]
    assert rank_progress(z, *m, RANK2, threshold=0.7).item() == pytest.approx(sum(want_t), rel=1e-12)


def test_rank_progress_is_zero_for_met_or_missing_constraints():
    # everything ranked right: zero (not the sum of the gaps), and empty sets add nothing
    z = _logit([[0.1, 0.9, 0.8, 0.2, 0.5]])
    assert rank_progress(z, *_masks(Y, A, B), RANK2).item() == 0.0
    y = _b([True, True, True])
    full, none = torch.ones_like(y), torch.zeros_like(y)
    # extreme case on an all-positive image: only Ω- = A1 is non-empty, so no term exists
    assert rank_progress(_logit([[0.7, 0.8, 0.9]]), *_masks(y, full, none), RANK2).item() == 0.0


def test_rank_loss_is_the_weighted_sum_of_the_terms():
    terms = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [0.5, 0.0, 0.0, 1.0, 0.0]], dtype=torch.float64)
    assert rank_loss(terms, RANK1).tolist() == [6.0, 0.5]
    assert rank_loss(terms, RANK2).tolist() == [15.0, 1.5]


def test_cw_progress_is_the_logit_hinge_with_kappa_as_a_logit():
    from mlnb.attacks.losses import cw_progress

    z = torch.tensor([[2.0, -1.0, 0.5, -3.0], [-1.0, 1.0, 0.0, 0.0]])
    target = _b([True, False, False, True], [True, True, False, False])
    ab = _b([True, True, True, False], [True, True, True, True])  # label 3 of image 0 is in C: ignored
    # margins s z: image 0 (2, 1, -0.5), image 1 (-1, 1, 0, 0)
    got = cw_progress(z, target, ab)
    assert got.dtype == torch.float64 and got.tolist() == [0.5, 1.0]
    assert cw_progress(z, target, ab, kappa=-0.1).tolist() == [0.5, 1.0]  # no negative margin
    k = math.log(0.7 / 0.3)  # kappa = 0.2 on probabilities is logit(0.7)
    assert cw_progress(z, target, ab, kappa=0.2).tolist() == pytest.approx([k + 0.5, (k + 1) + 2 * k], rel=1e-9)
    for kappa in (0.5, 0.7):  # at or past probability 1: the cap, logit 40
        assert cw_progress(z, target, ab, kappa=kappa).tolist() == pytest.approx([38 + 39 + 40.5, 41 + 39 + 80])


def test_rank_kernels_follow_the_logits_device_with_weights_on_the_cpu():
    # the meta device stands in for an accelerator: no data, but device mismatches raise
    z = torch.zeros(2, 5, dtype=torch.float64, device="meta")
    m = [torch.zeros(2, 5, dtype=torch.bool, device="meta")] * 7
    w = torch.ones(5)  # the weights stay on the CPU, as the attacks pass them
    for threshold in (None, 0.3):
        assert rank_terms(z, *m, threshold=threshold).device.type == "meta"
        assert rank_goal(z, *m, w, threshold=threshold).device.type == "meta"
        assert rank_progress(z, *m, w, threshold=threshold).device.type == "meta"
    assert rank_loss(torch.zeros(2, 5, device="meta"), w).device.type == "meta"


# ----------------------------------------------------------------------------- CW change of variables
def test_from_w_inverts_to_w_and_maps_every_w_into_the_unit_interval():
    from mlnb.attacks._driver import from_w, to_w

    x = torch.linspace(0.01, 0.99, 11, dtype=torch.float64)
    torch.testing.assert_close(from_w(to_w(x, 0.0)), x)
    assert from_w(torch.tensor([-50.0, 0.0, 50.0])).tolist() == [0.0, 0.5, 1.0]


# ----------------------------------------------------------------------------- ML-DP, paper form
def test_paper_step_keeps_a_constraint_whose_label_is_saturated_far_beyond_float32():
    """Logit 400: σ'(z) = e^-400 / (1 + e^-400)^2 is about 1e-174, tiny but representable in float64; the
    constraint must stay in the system (a step along it, of size (0.5 - F) / σ'), not drop out."""
    from mlnb.attacks.deepfool import paper_step

    J = torch.eye(3, dtype=torch.float64)[None, :2]  # (1, L=2, d=3): label k moves with pixel k
    logits = torch.tensor([[400.0, -1.0]], dtype=torch.float64)
    step = paper_step(J, logits, torch.tensor([[True, True]]))
    assert torch.isfinite(step).all() and step[0, 0] < -1e170 and step[0, 2] == 0
    e = math.exp(-1.0)
    assert step[0, 1].item() == pytest.approx(0.5 * math.tanh(0.5) / (e / (1 + e) ** 2), rel=1e-12)
