"""mlnb.target.Target: validation when made, the sets derived from (y, A, B), the one definition of
success (Eq. 4 at the 0.5 threshold, decided on logits), rows, the strategies that return Targets, and
every attack taking ``attack(model, x, target)`` exactly as ``attack(model, x, y, A, B)``.

Every expected value is computed here by hand or by the older free functions of :mod:`mlnb.labels`
(``divisions``, ``kendall_criterion``), never by the Target itself."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from mlnb import attacks
from mlnb import labels as lb
from mlnb.target import LOGIT_THRESHOLD, THRESHOLD, Divisions, Target
from test_attacks import FAST, _targets, tiny_problem

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_thread")]

FIELDS = ("y", "A", "B", "eligible")


def _b(*rows):
    return torch.tensor(rows, dtype=torch.bool)


def _random_problem(n=30, L=7, seed=0):
    """Random labels and a random valid target (A non-empty and disjoint from B on every row)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.rand(n, L, generator=g) < 0.4
    role = torch.randint(0, 3, (n, L), generator=g)  # 0: A, 1: B, 2: C
    role[torch.arange(n), torch.randint(0, L, (n,), generator=g)] = 0
    return y, role == 0, role == 1


def _same(t: Target, y, A, B, eligible) -> bool:
    return all(torch.equal(getattr(t, f), v) for f, v in zip(FIELDS, (y, A, B, eligible)))


# ----------------------------------------------------------------------------- validation
def test_thresholds_are_one_half_and_logit_zero():
    assert THRESHOLD == 0.5 and LOGIT_THRESHOLD == 0.0
    from mlnb import metrics

    assert metrics.THRESHOLD is THRESHOLD and metrics.LOGIT_THRESHOLD is LOGIT_THRESHOLD


def test_overlapping_a_and_b_are_refused_naming_image_and_label():
    y = torch.zeros(2, 3, dtype=torch.bool)
    A = _b([True, False, False], [False, True, False])
    B = _b([False, False, True], [False, True, True])
    with pytest.raises(ValueError, match="A and B overlap at image 1 label 1"):
        Target(y, A, B)
    with pytest.raises(ValueError, match="A and B overlap at image 1 label 1"):  # eligible does not excuse it
        Target(y, A, B, eligible=_b(True, False))


def test_an_empty_a_is_refused_on_an_eligible_image_and_allowed_on_an_ineligible_one():
    y = _b([True, False], [False, True], [True, True])
    A = _b([True, False], [False, False], [False, False])
    B = torch.zeros_like(A)
    with pytest.raises(ValueError, match=r"A is empty for images 1, 2"):
        Target(y, A, B)
    with pytest.raises(ValueError, match=r"A is empty for images 2"):
        Target(y, A, B, eligible=_b(True, False, True))
    t = Target(y, A, B, eligible=_b(True, False, False))
    assert t.eligible.tolist() == [True, False, False]
    assert t.met(torch.tensor([[-1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])).tolist() == [True, True, True]  # no constraint


def test_default_eligible_is_every_image():
    y, A, B = _random_problem(n=5)
    t = Target(y, A, B)
    assert t.eligible.dtype == torch.bool and t.eligible.shape == (5,) and t.eligible.all()


@pytest.mark.parametrize("bad", [
    torch.ones(3, dtype=torch.bool),  # one flag too many
    torch.ones(2, 1, dtype=torch.bool),  # (N, 1), not (N,)
    torch.ones(2, dtype=torch.int64),  # not bool
    torch.ones(2),  # float
    [True, True],  # not a tensor
])
def test_eligible_must_be_one_bool_flag_per_image(bad):
    y = _b([True, False], [False, True])
    A = _b([True, False], [False, True])
    with pytest.raises(ValueError, match=r"eligible must be a \(2,\) bool tensor"):
        Target(y, A, ~A, eligible=bad)


def test_masks_must_match_the_labels():
    y = torch.zeros(2, 3, dtype=torch.bool)
    A = _b([True, False, False], [True, False, False])
    with pytest.raises(ValueError, match=r"A has shape \(2, 4\) but y has \(2, 3\)"):
        Target(y, torch.zeros(2, 4, dtype=torch.bool), torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"B must be a bool tensor"):
        Target(y, A, torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"y must be a bool tensor.*pass y > 0"):
        Target(torch.tensor([[1, -1, 1], [-1, 1, 1]]), A, ~A)
    with pytest.raises(TypeError, match="y must be a torch.Tensor"):
        Target([[True, False, True]], A[:1], ~A[:1])


def test_a_target_is_frozen_and_not_a_tuple():
    y, A, B = _random_problem(n=5)
    t = Target(y, A, B)
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.A = B
    with pytest.raises((TypeError, ValueError)):
        A2, B2, ok = t  # strategies used to return (A, B, eligible)


def test_the_old_three_way_unpacking_fails_loudly_whatever_the_batch_size():
    y, A, B = _random_problem(n=3)
    try:
        A2, B2, ok = Target(y, A, B)
    except (TypeError, ValueError):
        return
    raise AssertionError(f"a 3-image Target unpacked into {type(A2).__name__}s")


# ----------------------------------------------------------------------------- derived sets
def test_derived_sets_by_hand():
    y = _b([True, False, True, False], [False, False, True, True])
    A = _b([True, True, False, False], [False, False, True, False])
    B = _b([False, False, True, False], [True, False, False, False])
    t = Target(y, A, B)
    assert t.y_star.tolist() == [[False, True, True, False], [False, False, False, True]]
    assert t.constrained.tolist() == [[True, True, True, False], [True, False, True, False]]
    assert t.C.tolist() == [[False, False, False, True], [False, True, False, True]]
    assert t.signs.dtype == torch.int8
    assert t.signs.tolist() == [[-1, 1, 1, 0], [-1, 0, -1, 0]]
    assert t.n_constraints.dtype == torch.int64 and t.n_constraints.tolist() == [3, 2]
    assert len(t) == 2


def test_derived_sets_match_their_definitions_on_random_targets():
    y, A, B = _random_problem()
    t = Target(y, A, B)
    assert torch.equal(t.y_star, lb.target_labels(y, A))
    assert torch.equal(t.constrained, A | B) and torch.equal(t.C, ~(A | B))
    want_signs = torch.where(A | B, torch.where(y ^ A, 1, -1), 0).to(torch.int8)
    assert torch.equal(t.signs, want_signs)
    assert torch.equal(t.n_constraints, (A | B).sum(1))


def test_y_tau_is_the_kendall_criterion():
    y, A, B = _random_problem(seed=1)
    t = Target(y, A, B)
    assert t.y_tau.dtype == torch.int8 and torch.equal(t.y_tau, lb.kendall_criterion(y, A, B))
    hand = Target(_b([True, False, True, False, True, False]), _b([True, True, False, False, False, False]),
                  _b([False, False, True, True, False, False]))
    assert hand.y_tau.tolist() == [[-2, 2, 1, -1, 0, 0]]  # A1, A-1, B1, B-1, C1, C-1


@pytest.mark.parametrize("omega_zero", lb.OMEGA_ZERO_CHOICES)
def test_divisions_are_table_one(omega_zero):
    y, A, B = _random_problem(seed=2)
    got, want = Target(y, A, B).divisions(omega_zero), lb.divisions(y, A, B, omega_zero)
    assert isinstance(got, Divisions) and got._fields == want._fields
    for name in Divisions._fields:
        assert torch.equal(getattr(got, name), getattr(want, name)), name


def test_divisions_default_to_c_and_refuse_an_unknown_omega_zero():
    y, A, B = _random_problem(seed=3)
    t = Target(y, A, B)
    assert torch.equal(t.divisions().omega_zero, ~(A | B))
    with pytest.raises(ValueError, match="unknown omega_zero 'D'"):
        t.divisions("D")


# ----------------------------------------------------------------------------- success
def test_a_logit_of_exactly_zero_is_positive_and_so_is_negative_zero():
    # y* = (T, F): label 0 must end positive (logit >= 0), label 1 negative (logit < 0); label 2 in C
    t = Target(_b([False, True, False]), _b([True, True, False]), _b([False, False, False]))
    assert t.y_star.tolist() == [[True, False, False]]
    zero, neg_zero = torch.zeros(1, 3), torch.full((1, 3), -0.0)
    assert torch.signbit(neg_zero).all() and not torch.signbit(zero).any()
    for z in (zero, neg_zero):
        assert t.constraints_met(z).tolist() == [[True, False, False]]
        assert t.n_satisfied(z).tolist() == [1] and t.met(z).tolist() == [False]
        assert t.flipped(z).tolist() == [1]
    tiny = torch.finfo(torch.float32).tiny * torch.finfo(torch.float32).eps  # the smallest subnormal
    below = torch.full((1, 3), -tiny)
    assert below.lt(0).all()
    assert t.constraints_met(below).tolist() == [[False, True, False]] and not t.met(below).any()
    assert t.met(torch.tensor([[0.0, -tiny, 5.0]])).tolist() == [True]  # label 2 in C: any value


def test_met_n_satisfied_and_flipped_against_a_loop():
    y, A, B = _random_problem(n=40, L=6, seed=4)
    t = Target(y, A, B)
    g = torch.Generator().manual_seed(5)
    z = torch.randn(40, 6, generator=g) * 2
    z[::3, 0] = 0.0  # exact ties with the threshold
    z[1::3, 1] = -0.0
    for i in range(40):
        ok = [(float(z[i, j]) >= 0) == (bool(y[i, j]) != bool(A[i, j])) for j in range(6)]
        cons = [j for j in range(6) if A[i, j] or B[i, j]]
        assert t.n_satisfied(z)[i].item() == sum(ok[j] for j in cons), i
        assert t.met(z)[i].item() == all(ok[j] for j in cons), i
        assert t.flipped(z)[i].item() == sum(ok[j] for j in range(6) if A[i, j]), i
        assert t.constraints_met(z)[i].tolist() == [ok[j] and (j in cons) for j in range(6)], i
    assert t.met(z).dtype == torch.bool and t.n_satisfied(z).dtype == torch.int64
    assert 0 < int(t.met(z).sum()) < 40  # both outcomes occur


# ----------------------------------------------------------------------------- rows
def _with_ineligible():
    y, A, B = _random_problem(n=6, seed=6)
    eligible = _b(True, False, True, True, False, True)
    A, B = A & eligible[:, None], B & eligible[:, None]
    return Target(y, A, B, eligible=eligible), (y, A, B, eligible)


@pytest.mark.parametrize("rows", [slice(1, None), slice(0, 6, 2), "mask", "index"])
def test_rows_keep_every_field(rows):
    t, (y, A, B, eligible) = _with_ineligible()
    t.y_star, t.y_tau  # cached on the whole target first: rows must not reuse the whole cache
    if rows == "mask":
        rows = _b(False, True, True, False, True, True)
    elif rows == "index":
        rows = torch.tensor([5, 1, 3])
    part = t[rows]
    assert isinstance(part, Target) and len(part) == len(y[rows])
    assert _same(part, y[rows], A[rows], B[rows], eligible[rows])
    assert torch.equal(part.y_star, t.y_star[rows]) and torch.equal(part.y_tau, t.y_tau[rows])
    assert torch.equal(part.n_constraints, t.n_constraints[rows])


def test_index_select_and_to_keep_every_field():
    t, (y, A, B, eligible) = _with_ineligible()
    keep = torch.tensor([4, 0, 2])
    part = t.index_select(keep)
    assert isinstance(part, Target) and _same(part, *(v.index_select(0, keep) for v in (y, A, B, eligible)))
    moved = t.to("cpu")
    assert isinstance(moved, Target) and _same(moved, y, A, B, eligible)
    meta = t.to("meta")  # the meta device stands in for an accelerator
    assert all(getattr(meta, f).device.type == "meta" for f in FIELDS)


def test_eligible_rows_of_a_target_make_a_target_of_eligible_images():
    t, (y, A, B, eligible) = _with_ineligible()
    part = t[t.eligible]
    assert part.eligible.all() and len(part) == int(eligible.sum())
    Target(part.y, part.A, part.B)  # validates: A non-empty on every row


# ----------------------------------------------------------------------------- strategies
@pytest.mark.parametrize("strategy", sorted(lb.STRATEGIES))
def test_strategies_return_targets_whose_eligible_rows_validate(strategy):
    g = torch.Generator().manual_seed(7)
    y = torch.rand(40, 5, generator=g) < 0.4
    y[0], y[1] = True, False  # all positive, all negative: ineligible for most strategies
    t = lb.make_target(strategy, y, label=1, generator=torch.Generator().manual_seed(8))
    assert isinstance(t, Target) and isinstance(t, lb.Target) and torch.equal(t.y, y)
    assert t.eligible.dtype == torch.bool and t.eligible.shape == (40,) and t.eligible.any()
    assert not (t.A | t.B)[~t.eligible].any()  # ineligible rows are all-False
    again = Target(t.y, t.A, t.B, t.eligible)  # the strategy's target validates as given
    assert _same(again, t.y, t.A, t.B, t.eligible)
    e = t.eligible
    Target(y[e], t.A[e], t.B[e])  # and its eligible rows on their own
    if not e.all():  # an ineligible row has an empty A: refused once it is claimed eligible
        with pytest.raises(ValueError, match="A is empty"):
            Target(t.y, t.A, t.B)


# ----------------------------------------------------------------------------- attacks take a Target
@pytest.fixture(scope="module")
def problem():
    """Four images of the fixture of tests/test_attacks.py and their random-case target."""
    return tiny_problem("random", 4)


ATTACK_FIELDS = ("x_adv", "success", "n_satisfied", "iterations", "logits", "scores")


@pytest.mark.parametrize("name", list(attacks.ATTACKS))
def test_every_attack_takes_a_target_with_the_same_result(problem, name):
    model, x, y, A, B = problem
    fn = attacks.ATTACKS[name]
    params = {**FAST[name], **({"n_search": 2, "max_iter": 20} if "n_search" in FAST[name] else {})}
    plain = fn(model, x, y, A, B, progress=False, **params)
    t = Target(y, A, B)
    via = fn(model, x, t, progress=False, **params)
    assert (plain.x_adv != x).flatten(1).any(1).all()  # real examples are compared, not clean images
    for f in ATTACK_FIELDS:
        assert torch.equal(getattr(via, f), getattr(plain, f)), f
    assert torch.equal(via.param.isnan(), plain.param.isnan())
    assert torch.equal(via.param.nan_to_num(), plain.param.nan_to_num())
    assert torch.equal(via.kendall_tau.nan_to_num(), plain.kendall_tau.nan_to_num())
    assert torch.equal(via.extras["n_constraints"], (A | B).sum(1))
    by_keyword = fn(model, x, y=t, progress=False, **params)  # the target in y's place, by name too
    assert torch.equal(by_keyword.x_adv, plain.x_adv)
    rows = fn(model, x[1:3], t[1:3], progress=False, **params)  # rows of a Target, as the runner chunks
    assert torch.allclose(rows.x_adv, plain.x_adv[1:3], atol=1e-5)
    assert torch.equal(rows.n_satisfied, plain.n_satisfied[1:3])


@pytest.mark.parametrize("name", list(attacks.ATTACKS))
def test_every_attack_refuses_an_ineligible_row_and_a_target_given_twice(problem, name):
    model, x, y, A, B = problem
    fn = attacks.ATTACKS[name]
    A2, B2 = A.clone(), B.clone()
    A2[2], B2[2] = False, False
    partial = Target(y, A2, B2, eligible=_b(True, True, False, True))
    with pytest.raises(ValueError, match=r"does not apply to images \[2\].*eligible"):
        fn(model, x, partial, progress=False, **FAST[name])
    t = Target(y, A, B)
    with pytest.raises(TypeError, match="not both"):
        fn(model, x, t, A, B, progress=False, **FAST[name])
    with pytest.raises(TypeError, match="not both"):
        fn(model, x, t, B=B, progress=False, **FAST[name])
    with pytest.raises(ValueError, match="batch sizes differ"):
        fn(model, x, t[:3], progress=False, **FAST[name])
    # the eligible rows of the same Target are accepted
    e = partial.eligible
    res = fn(model, x[e], partial[e], progress=False, **FAST[name])
    assert len(res) == 3


@pytest.mark.parametrize("name", ["fgs", "ml_cw"])
def test_tensors_without_b_are_refused_with_the_two_call_forms(problem, name):
    model, x, y, A, B = problem
    with pytest.raises(TypeError, match=r"attack\(model, x, y, A, B\)"):
        attacks.ATTACKS[name](model, x, y, A, progress=False, **FAST[name])


def test_nan_logits_meet_no_constraint_and_bad_logits_are_refused():
    y = torch.tensor([[True, False, False]])
    t = Target(y, torch.tensor([[True, False, False]]), torch.tensor([[False, True, False]]))  # y* all negative
    nan = torch.full((1, 3), float("nan"))
    assert t.n_satisfied(nan).tolist() == [0] and not bool(t.met(nan).any())  # NaN >= 0 is False, yet not "negative"
    assert t.n_satisfied(torch.tensor([[-1.0, -1.0, 5.0]])).tolist() == [2]  # finite logits: as before
    for bad in (torch.zeros(4, 3), torch.zeros(3), torch.zeros(1, 1), torch.zeros(1, 3, dtype=torch.long)):
        with pytest.raises(ValueError, match="logits must be a float tensor of the target's shape"):
            t.met(bad)
    with pytest.raises(TypeError, match=r"index it with a slice \(t\[0:1\]"):
        t[0]
    assert t[0:1].n_constraints.tolist() == [2]
