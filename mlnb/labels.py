"""Label sets of targeted multi-label attacks (Sec. II, III-A, III-C2 and IV-E of the paper).

Conventions used throughout ``mlnb``:

* clean labels ``y`` are ``(N, L)`` bool tensors (the paper's ``+1`` is ``True``, ``-1`` is ``False``);
* a *target* is two disjoint ``(N, L)`` bool masks: ``A`` (labels to flip) and ``B`` (labels to
  keep); ``C = L \\ (A ∪ B)`` is the rest and is left unconstrained;
* the target label vector is ``y* = y XOR A`` (Sec. II: ``h_a(x*) != y_a`` for ``a ∈ A``,
  ``h_b(x*) = y_b`` for ``b ∈ B``).

A :class:`Target` carries ``y``, ``A``, ``B`` and all that is derived from them, and decides success
(the one definition used everywhere). Strategies return a Target whose ``eligible`` ``(N,)`` bool mask
marks the images the strategy applies to (rows of ineligible images are all-False).

Introduced in notebooks/00_definitions.ipynb.
"""
from __future__ import annotations

import torch

from .target import OMEGA_ZERO_CHOICES, Divisions, Target, _criterion, _divisions  # noqa: F401 (Divisions: public here too)
from .validate import check_choice, check_generator, check_label_index, check_label_matrix, check_target

def target_labels(y: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """Target labels ``y* = y`` with the labels of ``A`` flipped. ``(N, L)`` bool -> ``(N, L)`` bool."""
    check_label_matrix(y, "y")
    check_label_matrix(A, "A")
    if A.shape != y.shape:
        raise ValueError(f"A has shape {tuple(A.shape)} but y has {tuple(y.shape)}")
    return y ^ A


def divisions(y: torch.Tensor, A: torch.Tensor, B: torch.Tensor, omega_zero: str = "C") -> Divisions:
    """Table I: split the labels by ground truth (rows) and by attack sets (columns).

    ``omega_zero`` picks Ω◦ of Sec. III-A2: ``"C"`` (the paper's default), ``"C-1"``, ``"C1"``
    or ``"empty"`` (milder constraints when ``|A| + |B| << |C|``).
    """
    check_target(y, A, B, require_nonempty_a=False)
    check_choice("omega_zero", omega_zero, OMEGA_ZERO_CHOICES)
    return _divisions(y, A, B, omega_zero)


def kendall_criterion(y: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """The criterion vector ``y_τ`` of Sec. III-C2, ``(N, L)`` int8 in ``{-2, -1, 0, 1, 2}``.

    ``A1 -> -2``, ``B-1 -> -1``, ``C -> 0``, ``B1 -> 1``, ``A-1 -> 2``: the order the ranking
    constraints of Eq. (2) and Eq. (10) ask the scores to follow.
    """
    return _criterion(divisions(y, A, B))


def _pick_one(mask: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One uniformly random True column per row of ``mask`` (rows without one get none)."""
    check_generator(generator)
    noise = torch.rand(mask.shape, generator=generator, device=_gen_device(generator)).to(mask.device)
    noise = torch.where(mask, noise, torch.full_like(noise, -1.0))
    choice = torch.zeros_like(mask)
    choice.scatter_(1, noise.argmax(1, keepdim=True), True)
    return choice & mask.any(1, keepdim=True)


def _gen_device(generator: torch.Generator | None) -> torch.device | str:
    return generator.device if generator is not None else "cpu"


def _finish(y: torch.Tensor, A: torch.Tensor, B: torch.Tensor, eligible: torch.Tensor) -> Target:
    A, B = A & eligible[:, None], B & eligible[:, None]
    return Target._trusted(y, A, B, eligible)


def random_case(y: torch.Tensor, generator: torch.Generator | None = None) -> Target:
    """Random case (Sec. IV-E): one random positive and one random negative label into ``A``,
    every other label into ``B``. Eligible: images with at least one positive and one negative."""
    check_label_matrix(y, "y")
    eligible = y.any(1) & (~y).any(1)
    A = _pick_one(y, generator) | _pick_one(~y, generator)
    return _finish(y, A, ~A, eligible)


def extreme_case(y: torch.Tensor) -> Target:
    """Extreme case (Sec. IV-E): flip every label, ``A = L`` and ``B = ∅``. Every image is eligible."""
    check_label_matrix(y, "y")
    return _finish(y, torch.ones_like(y), torch.zeros_like(y), torch.ones(y.shape[0], dtype=torch.bool, device=y.device))


def reduce_label(y: torch.Tensor, j: int | str, names=None) -> Target:
    """Reduce label ``j`` ("person reduction", Sec. IV-E): ``A = {j}``, ``B = L \\ {j}``.

    Eligible: ``j`` is positive and the image has at least two positive labels.
    ``j`` is an index, or a name looked up in ``names``.
    """
    check_label_matrix(y, "y")
    j = check_label_index(j, y.shape[1], names)
    A = torch.zeros_like(y)
    A[:, j] = True
    return _finish(y, A, ~A, y[:, j] & (y.sum(1) >= 2))


def augment_label(y: torch.Tensor, j: int | str, names=None) -> Target:
    """Augment label ``j`` ("sheep augmentation", Sec. IV-E): ``A = {j}``, ``B = L \\ {j}``.

    Eligible: ``j`` is negative.
    """
    check_label_matrix(y, "y")
    j = check_label_index(j, y.shape[1], names)
    A = torch.zeros_like(y)
    A[:, j] = True
    return _finish(y, A, ~A, ~y[:, j])


def hide_single(y: torch.Tensor, generator: torch.Generator | None = None) -> Target:
    """Extra: hide one random positive label, keep all others. Eligible: at least one positive."""
    check_label_matrix(y, "y")
    A = _pick_one(y, generator)
    return _finish(y, A, ~A, y.any(1))


def hide_all(y: torch.Tensor) -> Target:
    """Extra: hide every positive label and keep the negatives (``A = Y1``, ``B = Y-1``).
    Eligible: at least one positive."""
    check_label_matrix(y, "y")
    return _finish(y, y.clone(), ~y, y.any(1))


def show_all(y: torch.Tensor) -> Target:
    """Extra: switch on every negative label and keep the positives (``A = Y-1``, ``B = Y1``).
    Eligible: at least one negative."""
    check_label_matrix(y, "y")
    return _finish(y, ~y, y.clone(), (~y).any(1))


STRATEGIES = {
    "random": random_case,
    "extreme": extreme_case,
    "reduce": reduce_label,
    "augment": augment_label,
    "hide_single": hide_single,
    "hide_all": hide_all,
    "show_all": show_all,
}


def make_target(strategy: str, y: torch.Tensor, *, label=None, names=None,
                generator: torch.Generator | None = None) -> Target:
    """Dispatch to a strategy by name (``"random"``, ``"extreme"``, ``"reduce"``, ``"augment"``,
    ``"hide_single"``, ``"hide_all"``, ``"show_all"``); ``label`` is needed by reduce / augment."""
    check_choice("strategy", strategy, STRATEGIES)
    if strategy in ("reduce", "augment"):
        if label is None:
            raise ValueError(f"strategy {strategy!r} needs label=<index or name> of the label to {strategy}")
        return STRATEGIES[strategy](y, label, names)
    if strategy in ("random", "hide_single"):
        return STRATEGIES[strategy](y, generator)
    return STRATEGIES[strategy](y)


def to_pm1(y: torch.Tensor) -> torch.Tensor:
    """Bool labels -> the paper's ``{-1, +1}`` (int8), for display at the edges only."""
    return y.to(torch.int8) * 2 - 1


def from_pm1(y: torch.Tensor) -> torch.Tensor:
    """The paper's ``{-1, +1}`` labels -> bool; raises if any value is not ±1."""
    vals = set(torch.unique(y).tolist())
    if not vals <= {-1, 1}:
        raise ValueError(f"expected labels in {{-1, +1}}, found {sorted(vals)}")
    return y > 0
