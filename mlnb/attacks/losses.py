"""Loss functions of the six attacks as pure functions of logits and label masks.

Everything here is batched over images: ``logits`` are ``(N, L)``, masks are ``(N, L)`` bool, and
every loss is returned *per image* ``(N,)`` so that the driver can sum it (never average it) over the
batch: the gradient an image receives then does not depend on which other images share its batch.

The paper writes its constraints on probabilities ``F = sigmoid(z)``. Each loss here takes the
*logits* and evaluates the paper's probability formula exactly (:mod:`mlnb.probability`, float64):
the value is the formula's wherever float64 can hold it, the gradient is the true derivative (never
float32 sigmoid's rounded 0 at a saturated label), and two labels with different logits never tie.

* Success (the constraints of Eq. 4 at the 0.5 threshold, on the logits) is not here: it is decided in
  one place, :meth:`mlnb.target.Target.constraints_met` / ``n_satisfied`` / ``met``.
* :func:`cw_hinge`: the hinge of ML-CW, Eq. (5).
* :func:`rank_terms`: the five hinge terms of Rank I (Eq. 9, or the pairwise Eq. 8) and of Rank II
  (Eq. 11, both constraints of Eq. 10), on the ``e^f`` scores of the paper; :func:`rank_goal`: whether
  every ranking constraint they encode holds *strictly* (a tie is not a success).
* :func:`cw_step`, :func:`rank_step`: the driver's step, hinge with its gradient w.r.t. the logits written
  out (no autograd graph for the loss; the gradient is autograd's, bit for bit).
* Kendall's tau-b (the selection rule of Sec. III-C2) is :func:`mlnb.metrics.kendall_tau_b`; the driver
  computes the same numbers from the criterion's pair signs made once per target (``_state._tau``).

Introduced in notebooks/03_ml_cw.ipynb and notebooks/05_rank_attacks.ipynb.
"""
from __future__ import annotations

import torch

from .. import probability as P

N_RANK_TERMS = 5  # Eq. (9) has three terms, Eq. (11) adds two


def cw_margin(logits: torch.Tensor, target: torch.Tensor, space: str = "probability") -> torch.Tensor:
    """How far each label is past the threshold on its target side, ``(N, L)`` float64: ``s_i (F_i - 0.5)``
    (exact, :func:`mlnb.probability.prob_margin`) or, for ``space="logit"``, ``s_i z_i``; ``s_i = +1`` where
    the target label ``y*_i`` is positive. Negative: the constraint of Eq. (4) is violated."""
    if space == "logit":
        z = logits.double()
        return torch.where(target, z, -z)
    return P.prob_margin(logits, target)


def cw_hinge(logits: torch.Tensor, target: torch.Tensor, ab: torch.Tensor, kappa: float = 0.0,
             space: str = "probability") -> torch.Tensor:
    """ML-CW's constraint penalty, Eq. (5): ``sum_i max(0, y'_i F'_i(x + r) - c_i + kappa)`` over ``A ∪ B``,
    ``(N,)`` float64.

    With the sigmoid output and the 0.5 threshold (Eq. 3b), ``y'_i = -s_i`` and ``c_i = -0.5 s_i``
    where ``s_i = +1`` if the target label ``y*_i`` is positive and ``-1`` otherwise, so each term is
    ``max(0, kappa - s_i (F_i - 0.5))``, evaluated exactly from the logits (:func:`mlnb.probability.prob_margin`).
    ``kappa >= 0`` is an optional margin (0 in the paper). ``space="logit"`` (an extension, not the
    paper's) writes the same constraints on the logits: ``max(0, kappa - s_i z_i)``.
    """
    return (torch.clamp(kappa - cw_margin(logits, target, space), min=0) * ab).sum(1)


def cw_step(logits: torch.Tensor, target: torch.Tensor, ab: torch.Tensor, kappa: float = 0.0,
            space: str = "probability"):
    """:func:`cw_hinge` for one step of the driver, without autograd: ``(hinge (N,) float64, vjp)`` where
    ``vjp(lam)`` is the gradient of ``sum_n lam_n hinge_n`` w.r.t. ``logits`` (their dtype), to the bit the
    one autograd gives through :func:`cw_hinge` (each backward formula of its graph, in its order)."""
    z = logits.detach().double()
    c, back = (z, None) if space == "logit" else P.centered_vjp(z)
    x = kappa - torch.where(target, c, -c)
    h = (torch.clamp(x, min=0) * ab).sum(1)

    def vjp(lam):
        # the sum over labels and x ab, the clamp (no gradient where x <= 0), kappa - margin, then both
        # sides of where(target, c, -c) summed: g on the target side, 0 + (-(-g)) on the other
        g = -torch.where(x > 0, lam[:, None] * ab, 0.0)
        g = torch.where(target, g, 0.0 - g)
        return (g if back is None else back(g)).to(logits.dtype)
    return h, vjp


def cw_progress(logits: torch.Tensor, target: torch.Tensor, ab: torch.Tensor, kappa: float = 0.0) -> torch.Tensor:
    """How far the labels of ``A ∪ B`` still are from their target side, in logits, ``(N,)`` float64:
    ``sum_i max(0, kappa' - s_i z_i)`` with ``kappa'`` the margin ``kappa`` as a logit. The driver's
    early abort watches it beside the loss: a saturated label (logit 30 moving to 25) changes the
    probability hinge by 1e-11 but this sum by 5."""
    k = P.logit(0.5 + kappa) if 0 < kappa < 0.5 else (0.0 if kappa <= 0 else 40.0)
    return (torch.clamp(k - cw_margin(logits, target, "logit"), min=0) * ab).sum(1)


def _sets(omega_minus, omega_plus, omega_zero, A1, Bm1, B1, Am1, threshold):
    """The (low, high) label-set pairs of the five terms, ``(N, 5, L)`` each; for a hard threshold the
    Ω◦ side of terms 1 and 2 is empty (the threshold stands in for it)."""
    none = torch.zeros_like(omega_minus)
    mid_lo, mid_hi = (omega_zero, omega_zero) if threshold is None else (none, none)
    lo = torch.stack([omega_minus, omega_minus, mid_lo, A1, B1], 1)
    hi = torch.stack([omega_plus, mid_hi, omega_plus, Bm1, Am1], 1)
    return lo, hi


def rank_sets(omega_minus, omega_plus, omega_zero, A1, Bm1, B1, Am1, *, threshold: float | None = None) -> dict:
    """What the five ranking terms need of the label sets, computed once per target (they do not change
    during an attack): ``lo``, ``hi`` ``(N, 5, L)`` bool, the sets compared by each term; ``lo_any``,
    ``hi_any`` ``(N, 5)``, whether each side is non-empty; ``valid`` ``(N, 5)``, whether the term
    exists (both sides non-empty; with a hard threshold ``t`` the missing side of terms 1 and 2 is the
    constant ``logit(t)``). The driver keeps it per image (rows follow the active batch)."""
    lo, hi = _sets(omega_minus, omega_plus, omega_zero, A1, Bm1, B1, Am1, threshold)
    lo_any, hi_any = lo.any(2), hi.any(2)
    valid = lo_any & hi_any
    if threshold is not None:  # term 1: Ω- against t; term 2: t against Ω+
        k = torch.arange(N_RANK_TERMS, device=lo.device)
        valid = torch.where(k == 1, lo_any, torch.where(k == 2, hi_any, valid))
    return {"lo": lo, "hi": hi, "lo_any": lo_any, "hi_any": hi_any, "valid": valid}


def _extremes(logits, sets, threshold, vjp=False):
    """Per term: the largest logit of the low set and the smallest of the high set, ``(N, 5)`` float64
    (0 where that side is empty); with a hard threshold ``t`` the missing side of terms 1 and 2 is the
    constant ``logit(t)``. ``vjp=True``: taken without autograd, with a third output ``back(g_max, g_min)``,
    the gradient w.r.t. ``logits`` of ``<g_max, zmax> + <g_min, zmin>`` that autograd gives, to the bit."""
    z = (logits.detach() if vjp else logits).double().unsqueeze(1)
    z_lo, z_hi = torch.where(sets["lo"], z, -torch.inf), torch.where(sets["hi"], z, torch.inf)
    z_max, z_min = z_lo.amax(-1), z_hi.amin(-1)
    zmax = torch.where(sets["lo_any"], z_max, 0.0)
    zmin = torch.where(sets["hi_any"], z_min, 0.0)
    k = torch.arange(N_RANK_TERMS, device=logits.device) if threshold is not None else None
    if k is not None:
        zt = P.logit(float(threshold))
        zmin = torch.where(k == 1, zt, zmin)
        zmax = torch.where(k == 2, zt, zmax)
    if not vjp:
        return zmax, zmin

    def back(g_max, g_min):
        # backward of the threshold's where, of the empty side's where, of amax / amin (split evenly between
        # tied labels), of the set's where (summed over the terms); the two sides added
        if k is not None:
            g_max, g_min = torch.where(k == 2, 0.0, g_max), torch.where(k == 1, 0.0, g_min)
        sides = ((g_max, "lo_any", z_max, z_lo, "lo"), (g_min, "hi_any", z_min, z_hi, "hi"))
        out = []
        for g, any_side, extreme, zs, side in sides:
            tied = zs == extreme.unsqueeze(-1)
            g = (torch.where(sets[any_side], g, 0.0).unsqueeze(-1) / tied.sum(-1, keepdim=True)) * tied
            out.append(torch.where(sets[side], g, 0.0).sum(1, keepdim=True))
        return (out[0] + out[1]).squeeze(1).to(logits.dtype)
    return zmax, zmin, back


def _terms(logits, sets, zmax, zmin, pairwise, threshold):
    """The five terms from the sets (and, for the max/min form, the extremes already taken)."""
    if not pairwise:
        return torch.where(sets["valid"], torch.clamp(P.exp_gap(zmax, zmin), min=0), 0.0)
    lo, hi = sets["lo"], sets["hi"]
    z = logits.double()
    zt = None if threshold is None else torch.full_like(z, P.logit(float(threshold)))
    cols = []
    for k in range(N_RANK_TERMS):
        if zt is not None and k == 1:  # Ω- against the threshold
            d, pairs = torch.clamp(P.exp_gap(z, zt), min=0), lo[:, k]
        elif zt is not None and k == 2:  # the threshold against Ω+
            d, pairs = torch.clamp(P.exp_gap(zt, z), min=0), hi[:, k]
        else:
            pair = lo[:, k, :, None] & hi[:, k, None, :]
            d = torch.clamp(P.exp_gap(z[:, :, None], z[:, None, :]), min=0)
            d, pairs = d.flatten(1), pair.flatten(1)
        cols.append((d * pairs).sum(1) / pairs.sum(1).clamp(min=1))
    return torch.stack(cols, 1)


def _goal(sets, zmax, zmin, weights):
    need = sets["valid"] & (weights.to(zmax.device) > 0)
    return ((zmax < zmin) | ~need).all(1)


def _progress(sets, zmax, zmin, weights):
    d = torch.where(sets["valid"], torch.clamp(zmax - zmin, min=0), 0.0)
    return d @ weights.to(d.device, d.dtype)


def rank_step(logits: torch.Tensor, sets: dict, weights: torch.Tensor, *, pairwise: bool = False,
              threshold: float | None = None):
    """One step of Rank I / Rank II on prepared sets (:func:`rank_sets`): ``(hinge, goal, progress, vjp)``,
    the first three ``(N,)``, equal to ``rank_loss(rank_terms(...), weights)``, :func:`rank_goal` and
    :func:`rank_progress`, with the extremes taken once for all three; ``progress`` comes as a function of no
    arguments (the driver reads it only at its early-abort checks). ``vjp(lam)``: the gradient of
    ``sum_n lam_n hinge_n`` w.r.t. ``logits``, to the bit the one autograd gives through the hinge, which is
    then taken without autograd; ``None`` for ``pairwise`` (the hinge carries its autograd graph)."""
    if pairwise:
        zmax, zmin = _extremes(logits, sets, threshold)
        h, vjp = rank_loss(_terms(logits, sets, zmax, zmin, pairwise, threshold), weights), None
    else:
        zmax, zmin, back = _extremes(logits, sets, threshold, vjp=True)
        e, back_gap = P.exp_gap_vjp(zmax, zmin)
        w = weights.to(e.device, e.dtype)
        h = torch.where(sets["valid"], torch.clamp(e, min=0), 0.0) @ w

        def vjp(lam):  # backward of rank_loss's product, of the valid terms' where, of the clamp, of exp_gap
            return back(*back_gap(torch.where(e > 0, torch.where(sets["valid"], torch.outer(lam, w), 0.0), 0.0)))
    return h, _goal(sets, zmax, zmin, weights), lambda: _progress(sets, zmax, zmin, weights), vjp


def rank_terms(logits: torch.Tensor, omega_minus: torch.Tensor, omega_plus: torch.Tensor,
               omega_zero: torch.Tensor, A1: torch.Tensor, Bm1: torch.Tensor, B1: torch.Tensor,
               Am1: torch.Tensor, *, pairwise: bool = False, threshold: float | None = None) -> torch.Tensor:
    """The five ranking hinge terms, ``(N, 5)`` float64, each ``>= 0`` and finite, on ``e^{F}``.

    Columns (``F = sigmoid(logits)``, ``e = exp(F)`` as in the paper):

    0. ``max(0, max_{Ω-} e - min_{Ω+} e)``       Eq. (9), term of λ1
    1. ``max(0, max_{Ω-} e - min_{Ω◦} e)``       Eq. (9), term of λ2
    2. ``max(0, max_{Ω◦} e - min_{Ω+} e)``       Eq. (9), term of λ3
    3. ``max(0, max_{A1} e - min_{B-1} e)``      Eq. (11), first constraint of Eq. (10)
    4. ``max(0, max_{B1} e - min_{A-1} e)``      Eq. (11), second constraint of Eq. (10)

    The max / min are taken on the logits (``e^{sigmoid(z)}`` is increasing in ``z``) and each
    difference ``e^{F_a} - e^{F_b}`` is evaluated exactly (:func:`mlnb.probability.exp_gap`): labels
    at logits 18 and 20 differ by 1.3e-8 here, not 0 as in float32.

    ``pairwise=True`` replaces every max/min by the mean over label pairs (Eq. 8; Eq. 10 is already
    written over pairs). ``threshold=t`` replaces the soft middle ``f_γ`` by the constant ``t``
    (Sec. III-A2, "directly fix a hard threshold"): terms 1 and 2 become ``max(0, max_{Ω-} e - e^t)``
    and ``max(0, e^t - min_{Ω+} e)`` and ``omega_zero`` is ignored.

    A term whose label set is empty for an image is 0 for that image ("if Ω◦ = ∅ the last two terms
    are nonexistent"); the first term is kept even when Ω◦ ≠ ∅ (the paper says it *could* be dropped).
    """
    sets = rank_sets(omega_minus, omega_plus, omega_zero, A1, Bm1, B1, Am1, threshold=threshold)
    zmax, zmin = (None, None) if pairwise else _extremes(logits, sets, threshold)
    return _terms(logits, sets, zmax, zmin, pairwise, threshold)


def rank_goal(logits: torch.Tensor, omega_minus: torch.Tensor, omega_plus: torch.Tensor,
              omega_zero: torch.Tensor, A1: torch.Tensor, Bm1: torch.Tensor, B1: torch.Tensor,
              Am1: torch.Tensor, weights: torch.Tensor, *, threshold: float | None = None) -> torch.Tensor:
    """``(N,)`` bool: every ranking constraint encoded by the terms with a non-zero weight holds
    *strictly* (``max_{low} z < min_{high} z``, on logits: the same order as ``e^F``, exactly). A tie
    is not a success: the hinge of a tie is 0, but the label has not gone below the one it must."""
    sets = rank_sets(omega_minus, omega_plus, omega_zero, A1, Bm1, B1, Am1, threshold=threshold)
    return _goal(sets, *_extremes(logits, sets, threshold), weights)


def rank_progress(logits: torch.Tensor, omega_minus, omega_plus, omega_zero, A1, Bm1, B1, Am1,
                  weights: torch.Tensor, *, threshold: float | None = None) -> torch.Tensor:
    """The ranking hinge written on logits, ``sum_k w_k max(0, max_{low_k} z - min_{high_k} z)``, ``(N,)``
    float64: what the driver's early abort watches beside the loss (it does not saturate)."""
    sets = rank_sets(omega_minus, omega_plus, omega_zero, A1, Bm1, B1, Am1, threshold=threshold)
    return _progress(sets, *_extremes(logits, sets, threshold), weights)


def rank_loss(terms: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted sum of :func:`rank_terms`, ``(N,)``: the hinge part of Eq. (9) / Eq. (11) for λ = 1.

    ``weights`` ``(5,)`` are ``λ_i / λ``: ``(1, 1, 1, 0, 0)`` is Rank I, ``(1, 1, 1, 1, 1)`` Rank II.
    """
    return terms @ weights.to(terms.device, terms.dtype)
