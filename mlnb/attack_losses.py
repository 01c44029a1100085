"""Loss functions of the six attacks as pure functions of scores and label masks.

Everything here is batched over images: scores are ``(N, L)`` (probabilities in ``[0, 1]`` or
logits, as each function says), masks are ``(N, L)`` bool, and every loss is returned *per image*
``(N,)`` so that the driver can sum it (never average it) over the batch: the gradient an image
receives then does not depend on which other images share its batch.

* :func:`satisfied` / :func:`n_satisfied`: the constraints of Eq. (4) with the 0.5 threshold
  (Eq. 3b): a label counts as positive when its probability is ``>= 0.5``.
* :func:`cw_hinge`: the hinge of ML-CW, Eq. (5).
* :func:`rank_terms`: the five hinge terms of Rank I (Eq. 9, or the pairwise Eq. 8) and of Rank II
  (Eq. 11, both constraints of Eq. 10), with the exponentials ``e^f`` of the paper.
* :func:`kendall_tau_b`: Kendall's tau-b between scores and ``y_tau`` (selection rule of Sec. III-C2).

Introduced in notebooks/03_ml_cw.ipynb and notebooks/05_rank_attacks.ipynb.
"""
from __future__ import annotations

import torch

from .metrics import _kendall_tau_b_kernel

THRESHOLD = 0.5  # classification threshold on probabilities (Sec. IV-D)
N_RANK_TERMS = 5  # Eq. (9) has three terms, Eq. (11) adds two


def satisfied(probs: torch.Tensor, target: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """Which constraints of Eq. (4) hold: ``(N, L)`` bool, True where label ``i ∈ A ∪ B`` is on the
    target side of the threshold (``prob >= 0.5`` for a positive target ``y*_i``, ``< 0.5`` otherwise).

    ``probs`` ``(N, L)`` probabilities, ``target`` = ``y*`` ``(N, L)`` bool, ``ab`` = ``A | B``.
    """
    return ab & ((probs >= THRESHOLD) == target)


def n_satisfied(probs: torch.Tensor, target: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """Number of satisfied constraints of Eq. (4) per image, ``(N,)`` int64."""
    return satisfied(probs, target, ab).sum(1)


def cw_hinge(probs: torch.Tensor, target: torch.Tensor, ab: torch.Tensor, kappa: float = 0.0) -> torch.Tensor:
    """ML-CW's constraint penalty, Eq. (5): ``sum_i max(0, y'_i F'_i(x + r) - c_i + kappa)`` over ``A ∪ B``.

    With the sigmoid output and the 0.5 threshold (Eq. 3b), ``y'_i = -s_i`` and ``c_i = -0.5 s_i``
    where ``s_i = +1`` if the target label ``y*_i`` is positive and ``-1`` otherwise, so each term is
    ``max(0, kappa - s_i (f_i - 0.5))``. ``kappa >= 0`` is an optional margin (0 in the paper).
    Returns ``(N,)``.
    """
    s = target.to(probs.dtype) * 2 - 1
    terms = torch.clamp(kappa - s * (probs - THRESHOLD), min=0)
    return (terms * ab).sum(1)


def _masked_max(v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, v, torch.full_like(v, -torch.inf)).amax(1)


def _masked_min(v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, v, torch.full_like(v, torch.inf)).amin(1)


def _hinge_maxmin(e: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``max(0, max_{lo} e - min_{hi} e)`` per image; 0 where either set is empty (finite gradient)."""
    valid = lo.any(1) & hi.any(1)
    diff = _masked_max(e, lo) - _masked_min(e, hi)
    return torch.where(valid, torch.clamp(torch.where(valid, diff, 0.0), min=0), 0.0)


def _hinge_pairwise(e: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``1/(|lo||hi|) sum_{(a, b) ∈ lo x hi} max(0, e_a - e_b)`` per image (Eq. 8); 0 for an empty set."""
    pairs = lo[:, :, None] & hi[:, None, :]
    diff = torch.clamp(e[:, :, None] - e[:, None, :], min=0) * pairs
    return diff.flatten(1).sum(1) / pairs.flatten(1).sum(1).clamp(min=1)


def _hinge_threshold(e: torch.Tensor, mask: torch.Tensor, e_t: float, below: bool) -> torch.Tensor:
    """Ω◦ replaced by a hard threshold: ``max(0, max_mask e - e^t)`` (below) or ``max(0, e^t - min_mask e)``."""
    if below:
        return torch.where(mask, torch.clamp(e - e_t, min=0), 0.0).amax(1)
    return torch.where(mask, torch.clamp(e_t - e, min=0), 0.0).amax(1)


def _hinge_threshold_pairwise(e: torch.Tensor, mask: torch.Tensor, e_t: float, below: bool) -> torch.Tensor:
    d = torch.clamp(e - e_t if below else e_t - e, min=0) * mask
    return d.sum(1) / mask.sum(1).clamp(min=1)


def rank_terms(probs: torch.Tensor, omega_minus: torch.Tensor, omega_plus: torch.Tensor,
               omega_zero: torch.Tensor, A1: torch.Tensor, Bm1: torch.Tensor, B1: torch.Tensor,
               Am1: torch.Tensor, *, pairwise: bool = False, threshold: float | None = None) -> torch.Tensor:
    """The five ranking hinge terms, ``(N, 5)``, each ``>= 0`` and finite, computed on ``e^{f}``.

    Columns (``f`` = probabilities, ``e = exp(f)`` as in the paper):

    0. ``max(0, max_{Ω-} e - min_{Ω+} e)``       Eq. (9), term of λ1
    1. ``max(0, max_{Ω-} e - min_{Ω◦} e)``       Eq. (9), term of λ2
    2. ``max(0, max_{Ω◦} e - min_{Ω+} e)``       Eq. (9), term of λ3
    3. ``max(0, max_{A1} e - min_{B-1} e)``      Eq. (11), first constraint of Eq. (10)
    4. ``max(0, max_{B1} e - min_{A-1} e)``      Eq. (11), second constraint of Eq. (10)

    ``pairwise=True`` replaces every max/min by the mean over label pairs (Eq. 8; Eq. 10 is already
    written over pairs). ``threshold=t`` replaces the soft middle ``f_γ`` by the constant ``t``
    (Sec. III-A2, "directly fix a hard threshold"): terms 1 and 2 become ``max(0, max_{Ω-} e - e^t)``
    and ``max(0, e^t - min_{Ω+} e)`` and ``omega_zero`` is ignored.

    A term whose label set is empty for an image is 0 for that image ("if Ω◦ = ∅ the last two terms
    are nonexistent"); the first term is kept even when Ω◦ ≠ ∅ (the paper says it *could* be dropped).
    """
    e = torch.exp(probs)
    if pairwise:
        cols = [_hinge_pairwise(e, omega_minus, omega_plus)]
        if threshold is None:
            cols += [_hinge_pairwise(e, omega_minus, omega_zero), _hinge_pairwise(e, omega_zero, omega_plus)]
        else:
            e_t = float(torch.exp(torch.tensor(float(threshold))))
            cols += [_hinge_threshold_pairwise(e, omega_minus, e_t, True),
                     _hinge_threshold_pairwise(e, omega_plus, e_t, False)]
        cols += [_hinge_pairwise(e, A1, Bm1), _hinge_pairwise(e, B1, Am1)]
        return torch.stack(cols, 1)
    # max/min form: every max-min term in one batched pass over a (N, T, L) stack of label sets
    # (a few kernels per step instead of a dozen per term; same values)
    if threshold is None:
        return _hinge_maxmin_stack(e, torch.stack([omega_minus, omega_minus, omega_zero, A1, B1], 1),
                                   torch.stack([omega_plus, omega_zero, omega_plus, Bm1, Am1], 1))
    e_t = float(torch.exp(torch.tensor(float(threshold))))
    mm = _hinge_maxmin_stack(e, torch.stack([omega_minus, A1, B1], 1), torch.stack([omega_plus, Bm1, Am1], 1))
    return torch.cat([mm[:, :1], _hinge_threshold(e, omega_minus, e_t, True)[:, None],
                      _hinge_threshold(e, omega_plus, e_t, False)[:, None], mm[:, 1:]], 1)


def _hinge_maxmin_stack(e: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """:func:`_hinge_maxmin` for ``T`` pairs of label sets at once: ``e`` ``(N, L)``, ``lo``/``hi``
    ``(N, T, L)`` bool -> ``(N, T)``."""
    valid = lo.any(2) & hi.any(2)
    ee = e.unsqueeze(1)
    diff = torch.where(lo, ee, -torch.inf).amax(2) - torch.where(hi, ee, torch.inf).amin(2)
    return torch.where(valid, torch.clamp(torch.where(valid, diff, 0.0), min=0), 0.0)


def rank_loss(terms: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted sum of :func:`rank_terms`, ``(N,)``: the hinge part of Eq. (9) / Eq. (11) for λ = 1.

    ``weights`` ``(5,)`` are ``λ_i / λ``: ``(1, 1, 1, 0, 0)`` is Rank I, ``(1, 1, 1, 1, 1)`` Rank II.
    """
    return terms @ weights.to(terms.dtype)


# Kendall tau-b (selection rule of Sec. III-C2): one kernel, shared with mlnb.metrics (unvalidated here).
# Pass logits rather than probabilities where they may saturate: the ranking is the same and float32
# sigmoid ties (probabilities of exactly 1.0) are avoided.
kendall_tau_b = _kendall_tau_b_kernel
