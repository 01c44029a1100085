"""Behaviour of mlnb.labels that the other unit tests left unpinned (found by mutation testing,
docs/MUTATION.md): error messages name the argument at fault, seeded strategies are reproducible
through make_target, targets follow the labels' device, and to_pm1's dtype."""
from __future__ import annotations

import pytest
import torch

from mlnb import labels as Lb

pytestmark = pytest.mark.unit

ONE_ARG = ("random_case", "extreme_case", "hide_single", "hide_all", "show_all")


@pytest.mark.parametrize("name", ONE_ARG)
def test_strategies_name_y_when_the_labels_are_not_a_bool_mask(name):
    with pytest.raises(ValueError, match=r"^y must be a bool tensor"):
        getattr(Lb, name)(torch.ones(2, 3))


@pytest.mark.parametrize("name", ["reduce_label", "augment_label"])
def test_single_label_strategies_name_y_when_the_labels_are_not_a_bool_mask(name):
    with pytest.raises(ValueError, match=r"^y must be a bool tensor"):
        getattr(Lb, name)(torch.ones(2, 3), 0)


def test_target_labels_names_the_argument_at_fault():
    good = torch.zeros(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"^y must be a bool tensor"):
        Lb.target_labels(torch.ones(2, 3), good)
    with pytest.raises(ValueError, match=r"^A must be a bool tensor"):
        Lb.target_labels(good, torch.ones(2, 3))


def _labels(n=64, l=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, l, generator=g) < 0.4


def test_hide_single_draws_from_the_given_generator():
    y = _labels()
    a = Lb.hide_single(y, torch.Generator().manual_seed(7))
    b = Lb.hide_single(y, torch.Generator().manual_seed(7))
    c = Lb.hide_single(y, torch.Generator().manual_seed(8))
    assert torch.equal(a.A, b.A) and not torch.equal(a.A, c.A)


@pytest.mark.parametrize("strategy", ["random", "hide_single"])
def test_make_target_passes_the_generator_to_seeded_strategies(strategy):
    y = _labels()
    direct = Lb.STRATEGIES[strategy](y, torch.Generator().manual_seed(3))
    for _ in range(2):
        via = Lb.make_target(strategy, y, generator=torch.Generator().manual_seed(3))
        assert torch.equal(via.A, direct.A) and torch.equal(via.B, direct.B)


def test_extreme_case_follows_the_labels_device():
    # the meta device stands in for an accelerator: device mismatches raise, no data needed
    y = torch.zeros(3, 4, dtype=torch.bool, device="meta")
    t = Lb.extreme_case(y)
    assert t.A.device.type == t.B.device.type == t.eligible.device.type == "meta"


def test_to_pm1_gives_int8_plus_minus_one():
    out = Lb.to_pm1(torch.tensor([[True, False]]))
    assert out.dtype == torch.int8 and out.tolist() == [[1, -1]]


@pytest.mark.parametrize("strategy", ["random", "hide_single"])
def test_seeded_strategies_without_a_generator_draw_from_torch_global_rng(strategy):
    y = _labels()
    torch.manual_seed(11)
    a = Lb.make_target(strategy, y)
    torch.manual_seed(11)
    b = Lb.make_target(strategy, y)
    assert torch.equal(a.A, b.A) and a.A.any()


def test_pick_one_leaves_rows_without_a_candidate_empty():
    mask = torch.tensor([[False, False, False], [False, True, True], [True, False, False]])
    for seed in range(5):
        choice = Lb._pick_one(mask, torch.Generator().manual_seed(seed))
        assert choice.sum(1).tolist() == [0, 1, 1] and not (choice & ~mask).any()


def test_pick_one_follows_the_masks_device():
    # the meta device stands in for an accelerator: the noise is drawn on the generator's device, then moved
    y = torch.zeros(2, 4, dtype=torch.bool, device="meta")
    assert Lb._pick_one(y, torch.Generator().manual_seed(0)).device.type == "meta"
