"""mlnb.labels: Table I, the Ω sets, y_τ, every target strategy and the validation messages."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from mlnb import labels as lb
from mlnb.validate import check_target

pytestmark = pytest.mark.unit

NAMES = ("cat", "dog", "sheep", "cow", "bird")


def example_y(n=50, L=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.rand(n, L, generator=g) < 0.4
    y[0], y[1] = True, False  # all positive, all negative
    return y


def test_target_labels_flip_a():
    y = torch.tensor([[True, False, True]])
    A = torch.tensor([[True, True, False]])
    assert lb.target_labels(y, A).tolist() == [[False, True, True]]


def test_table_one_cells_partition_labels():
    y = example_y()
    t = lb.random_case(y, generator=torch.Generator().manual_seed(1))
    A, B, eligible = t.A, t.B, t.eligible
    d = lb.divisions(y, A, B)
    cells = torch.stack([d.A1, d.Am1, d.B1, d.Bm1, d.C1, d.Cm1])
    assert (cells.sum(0) == 1).all()  # each label is in exactly one cell
    assert torch.equal(d.A1 | d.Am1, A) and torch.equal(d.B1 | d.Bm1, B)
    assert torch.equal(d.A1 | d.B1 | d.C1, y)  # row Y1 of Table I
    assert torch.equal(d.omega_minus, d.A1 | d.Bm1) and torch.equal(d.omega_plus, d.Am1 | d.B1)
    assert torch.equal(d.omega_zero, ~(A | B))  # Ω◦ = C by default
    # Ω- labels end negative and Ω+ labels end positive in y* = y XOR A
    y_star = lb.target_labels(y, A)
    assert not (y_star & d.omega_minus).any() and (y_star | ~d.omega_plus).all()


def test_omega_zero_choices():
    y = torch.tensor([[True, False, True, False, True]])
    A = torch.tensor([[True, True, False, False, False]])
    B = torch.tensor([[False, False, True, False, False]])
    C = ~(A | B)
    assert torch.equal(lb.divisions(y, A, B, "C").omega_zero, C)
    assert torch.equal(lb.divisions(y, A, B, "C1").omega_zero, C & y)
    assert torch.equal(lb.divisions(y, A, B, "C-1").omega_zero, C & ~y)
    assert not lb.divisions(y, A, B, "empty").omega_zero.any()
    with pytest.raises(ValueError, match="unknown omega_zero 'D'.*'C-1'"):
        lb.divisions(y, A, B, "D")


def test_kendall_criterion_values():
    # labels:     A1     A-1    B1     B-1    C1     C-1
    y = torch.tensor([[True, False, True, False, True, False]])
    A = torch.tensor([[True, True, False, False, False, False]])
    B = torch.tensor([[False, False, True, True, False, False]])
    y_tau = lb.kendall_criterion(y, A, B)
    assert y_tau.dtype == torch.int8 and y_tau.tolist() == [[-2, 2, 1, -1, 0, 0]]


def test_random_case_masks_and_eligibility():
    y = example_y()
    t = lb.random_case(y, generator=torch.Generator().manual_seed(3))
    A, B, eligible = t.A, t.B, t.eligible
    assert torch.equal(eligible, y.any(1) & (~y).any(1))
    assert not eligible[0] and not eligible[1]
    e = eligible
    assert ((A & y).sum(1)[e] == 1).all() and ((A & ~y).sum(1)[e] == 1).all()  # one positive, one negative
    assert torch.equal(B[e], ~A[e])  # everything else kept
    assert not (A | B)[~e].any()  # ineligible rows are empty


def test_random_case_seeded_determinism():
    y = example_y(n=200, L=8)
    a1 = lb.random_case(y, generator=torch.Generator().manual_seed(7))
    a2 = lb.random_case(y, generator=torch.Generator().manual_seed(7))
    b = lb.random_case(y, generator=torch.Generator().manual_seed(8))
    assert all(torch.equal(getattr(a1, f), getattr(a2, f)) for f in ("y", "A", "B", "eligible"))
    assert not torch.equal(a1.A, b.A)
    assert torch.equal(lb.make_target("random", y, generator=torch.Generator().manual_seed(7)).A, a1.A)


def test_extreme_case():
    y = example_y()
    t = lb.extreme_case(y)
    A, B, eligible = t.A, t.B, t.eligible
    assert A.all() and not B.any() and eligible.all()
    assert torch.equal(lb.target_labels(y, A), ~y)


def test_reduce_label_eligibility():
    y = torch.tensor([[True, True, False], [True, False, False], [False, True, True], [True, True, True]])
    t = lb.reduce_label(y, 0)
    A, B, eligible = t.A, t.B, t.eligible
    assert eligible.tolist() == [True, False, False, True]  # j positive and at least two positives
    assert A[eligible].tolist() == [[True, False, False]] * 2 and torch.equal(B[eligible], ~A[eligible])
    assert not (A | B)[~eligible].any()
    by_name = lb.reduce_label(y, "dog", names=("cat", "dog", "sheep"))
    assert by_name.eligible.tolist() == [True, False, True, True] and by_name.A[0, 1]


def test_augment_label_eligibility():
    y = torch.tensor([[True, True, False], [False, False, True], [True, False, True]])
    t = lb.augment_label(y, 2)
    A, B, eligible = t.A, t.B, t.eligible
    assert eligible.tolist() == [True, False, False]  # j negative
    assert A[0].tolist() == [False, False, True] and B[0].tolist() == [True, True, False]
    assert not (A | B)[1:].any()
    t = lb.make_target("augment", y, label="sheep", names=("cat", "dog", "sheep"))
    assert torch.equal(t.A, A)


def test_hide_single_hide_all_show_all():
    y = example_y(n=60)
    t = lb.hide_single(y, generator=torch.Generator().manual_seed(0))
    A, B, e = t.A, t.B, t.eligible
    assert torch.equal(e, y.any(1))
    assert ((A & y).sum(1)[e] == 1).all() and not (A & ~y).any() and torch.equal(B[e], ~A[e])
    t = lb.hide_all(y)
    A, B, e = t.A, t.B, t.eligible
    assert torch.equal(e, y.any(1)) and torch.equal(A[e], y[e]) and torch.equal(B[e], ~y[e])
    assert not lb.target_labels(y, A).any()  # every label ends negative
    t = lb.show_all(y)
    A, B, e = t.A, t.B, t.eligible
    assert torch.equal(e, (~y).any(1)) and torch.equal(A[e], ~y[e]) and torch.equal(B[e], y[e])
    assert lb.target_labels(y, A)[e].all()  # every label ends positive


def test_strategies_registry_and_dispatch():
    y = example_y()
    assert set(lb.STRATEGIES) == {"random", "extreme", "reduce", "augment", "hide_single", "hide_all", "show_all"}
    for name in lb.STRATEGIES:
        t = lb.make_target(name, y, label=0, generator=torch.Generator().manual_seed(0))
        assert t.A.shape == y.shape and t.eligible.shape == (y.shape[0],)
        assert not (t.A & t.B).any() and t.A[t.eligible].any(1).all()


def test_pm1_round_trip():
    y = example_y()
    assert set(lb.to_pm1(y).unique().tolist()) == {-1, 1}
    assert torch.equal(lb.from_pm1(lb.to_pm1(y)), y)
    with pytest.raises(ValueError, match=r"expected labels in \{-1, \+1\}"):
        lb.from_pm1(torch.tensor([[0, 1]]))


# ----------------------------------------------------------------------------- validation messages
def test_overlap_names_image_and_label():
    y = torch.zeros(2, 3, dtype=torch.bool)
    A = torch.tensor([[True, False, False], [False, True, False]])
    B = torch.tensor([[False, False, True], [False, True, True]])
    with pytest.raises(ValueError, match="A and B overlap at image 1 label 1"):
        lb.divisions(y, A, B)


def test_empty_a_for_eligible_image():
    y = torch.tensor([[True, False], [False, True]])
    A = torch.tensor([[True, False], [False, False]])
    B = torch.zeros_like(A)
    with pytest.raises(ValueError, match=r"A is empty for images 1"):
        check_target(y, A, B)
    check_target(y, A, B, eligible=torch.tensor([True, False]))  # an ineligible empty row is fine


def test_shape_and_dtype_mismatch():
    y = torch.zeros(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"A has shape \(2, 4\) but y has \(2, 3\)"):
        lb.divisions(y, torch.zeros(2, 4, dtype=torch.bool), torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"A has shape \(2, 4\) but y has \(2, 3\)"):
        lb.target_labels(y, torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"y must be a bool tensor.*pass y > 0"):
        lb.random_case(torch.tensor([[1, -1], [-1, 1]]))
    with pytest.raises(ValueError, match=r"B must be a bool tensor.*float32"):
        lb.divisions(y, y, torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"y must be 2-D \(N, L\)"):
        lb.extreme_case(torch.zeros(3, dtype=torch.bool))
    with pytest.raises(TypeError, match="y must be a torch.Tensor"):
        lb.hide_all([[True, False]])


def test_label_index_and_name_errors():
    y = example_y()
    with pytest.raises(ValueError, match=r"label index 5 is out of range: there are 5 labels \(0..4\)"):
        lb.reduce_label(y, 5)
    with pytest.raises(ValueError, match="label index -1 is out of range"):
        lb.augment_label(y, -1)
    with pytest.raises(ValueError, match="unknown label name 'person': choose one of cat, dog"):
        lb.reduce_label(y, "person", names=NAMES)
    with pytest.raises(TypeError, match="label index must be an int"):
        lb.augment_label(y, 1.0)


def test_unknown_strategy_and_missing_label():
    y = example_y()
    with pytest.raises(ValueError, match="unknown strategy 'randm': choose one of 'random', 'extreme'"):
        lb.make_target("randm", y)
    with pytest.raises(ValueError, match="strategy 'reduce' needs label="):
        lb.make_target("reduce", y)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 8), st.integers(1, 7), st.floats(0, 1), st.integers(0, 2**16),
       st.sampled_from(sorted(lb.STRATEGIES)))
def test_strategy_invariants(n, L, p, seed, strategy):
    g = torch.Generator().manual_seed(seed)
    y = torch.rand(n, L, generator=g) < p
    t = lb.make_target(strategy, y, label=seed % L, generator=g)
    assert not (t.A & t.B).any()
    assert t.A[t.eligible].any(1).all()  # A != ∅ on every eligible image
    assert not (t.A | t.B)[~t.eligible].any()
    check_target(y, t.A, t.B, t.eligible)
    y_tau = lb.kendall_criterion(y, t.A, t.B)
    assert set(y_tau.unique().tolist()) <= {-2, -1, 0, 1, 2}
