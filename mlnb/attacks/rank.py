"""Rank I and Rank II (Sec. III-C, Eq. 8-11): ranking-based attacks on the shared driver.

Introduced in notebooks/05_rank_attacks.ipynb.
"""
from __future__ import annotations

import math

import torch

from .. import validate as V
from ..target import OMEGA_ZERO_CHOICES, Target
from ._core import AttackResult, setup
from ._driver import run_search
from .losses import N_RANK_TERMS, rank_sets, rank_step

RANK_SELECT_CHOICES = ("tau", "constraints")
RANKING_SETS = ("omega_minus", "omega_plus", "omega_zero", "A1", "Bm1", "B1", "Am1")  # the losses' argument order


def ranking_sets(goal: Target, omega_zero: str = "C") -> dict[str, torch.Tensor]:
    """The label sets the ranking losses read, ``{name: (N, L) bool}`` for :data:`RANKING_SETS` (Ω-, Ω+,
    Ω◦, A1, B-1, B1, A-1: Table I and Sec. III-A2; ``omega_zero`` picks Ω◦)."""
    d = goal.divisions(omega_zero)
    return {name: getattr(d, name) for name in RANKING_SETS}


@torch.enable_grad()  # also when called under torch.no_grad(): every attack takes gradients
def _rank_attack(name, n_terms, model, x, y, A, B, progress, *, lambda_init, n_search, max_iter, lr,
                 omega_zero, threshold, pairwise, weights, select, tanh_eps, check_every, early_abort, trace,
                 batch_size, autocast_dtype, channels_last) -> AttackResult:
    rt, goal = setup(model, x, y, A, B, batch_size=batch_size, autocast_dtype=autocast_dtype,
                     channels_last=channels_last)
    V.check_choice("omega_zero", omega_zero, OMEGA_ZERO_CHOICES)
    V.check_choice("select", select, RANK_SELECT_CHOICES)
    V.check_annotated("pairwise", pairwise, bool)
    if threshold is not None and not (isinstance(threshold, (int, float)) and 0 < threshold < 1):
        raise ValueError(f"threshold must be None or a probability in (0, 1), got {threshold!r}")
    if (len(weights) != n_terms or any(not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 for v in weights)
            or not any(weights)):
        raise ValueError(f"weights must be {n_terms} non-negative numbers, not all 0 "
                         f"(λ1..λ{n_terms} relative to λ), got {weights!r}")
    w = torch.zeros(N_RANK_TERMS, dtype=torch.float32, device=x.device)
    w[:n_terms] = torch.tensor([float(v) for v in weights])

    def hinge(logits, S):
        return rank_step(logits, S.extra, w, pairwise=pairwise, threshold=threshold)

    final = "tau" if select == "tau" else "constraints_tau"
    return run_search(name, rt, x, goal, hinge, progress, "tau", final, lambda_init=lambda_init, n_search=n_search,
                      max_iter=max_iter, lr=lr, tanh_eps=tanh_eps, check_every=check_every, batch_size=batch_size,
                      early_abort=early_abort, trace=trace,
                      extra=rank_sets(**ranking_sets(goal, omega_zero), threshold=threshold))


_RANK_DOC = """

    * Ranking sets (Table I): ``Ω- = A1 ∪ B-1`` (to rank low), ``Ω+ = A-1 ∪ B1`` (to rank high),
      ``Ω◦`` = ``omega_zero`` in {"C" (paper), "C-1", "C1", "empty"}, or ``threshold=t`` to replace the
      soft middle ``f_γ`` by the hard threshold ``t`` (Sec. III-A2). ``pairwise=True`` uses the full
      pairwise Eq. (8) instead of the max/min of Eq. (9).
    * Scores are probabilities and the terms compare ``e^{f}`` as printed. A term whose label set is
      empty for an image contributes 0 for it. λ_i = λ x ``weights[i]`` (the paper: all equal).
    * Distortion: squared L2 of the perturbation, CW change of variables and Adam, binary search on λ
      exactly as :func:`ml_cw` (and its ``early_abort`` and ``trace``); a run counts as successful when every ranking constraint its loss
      encodes holds (the hinge part is 0). An image whose clean prediction already meets Eq. (4) is returned
      as it is, with ``success`` True (Eq. 4 is every attack's one definition of success), even where its
      ranking constraints do not hold: pass it with a target it does not meet yet to rank it.
    * Selection (Sec. III-C2): within a λ run, the iterate with the highest Kendall tau-b between the
      scores (logits: same ranking, no float32 ties) and ``y_tau``, ties -> smaller L2. Across λ:
      ``select="tau"`` (paper) keeps the same rule; ``select="constraints"`` prefers the most
      constraints of Eq. (4), then tau, then smaller L2.
"""


def rank1(model, x, y, A=None, B=None, *, generator=None, progress=True, lambda_init: float = 1e5, n_search: int = 10,
          max_iter: int = 1000, lr: float = 1e-2, omega_zero: str = "C", threshold: float | None = None,
          pairwise: bool = False, weights=(1.0, 1.0, 1.0), select: str = "tau", tanh_eps: float = 1e-6,
          check_every: int = 10, early_abort: bool = True, trace: bool = False, batch_size: int | None = None,
          autocast_dtype=None, channels_last: bool = False) -> AttackResult:
    """Rank I (Sec. III-C1, Eq. 9): ``||r||_2^2 + λ1 [max_{Ω-} e^f - min_{Ω+} e^f]_+
    + λ2 [max_{Ω-} e^f - min_{Ω◦} e^f]_+ + λ3 [max_{Ω◦} e^f - min_{Ω+} e^f]_+``.
    {doc}
    >>> res = rank1(model.eval(), x, y, A, B, lambda_init=10.0, n_search=5, max_iter=100)
    >>> res.kendall_tau

    Introduced in notebooks/05_rank_attacks.ipynb.
    """
    return _rank_attack("rank1", 3, model, x, y, A, B, progress, lambda_init=lambda_init, n_search=n_search,
                        max_iter=max_iter, lr=lr, omega_zero=omega_zero, threshold=threshold, pairwise=pairwise,
                        weights=weights, select=select, tanh_eps=tanh_eps, check_every=check_every,
                        early_abort=early_abort, trace=trace, batch_size=batch_size, autocast_dtype=autocast_dtype, channels_last=channels_last)


def rank2(model, x, y, A=None, B=None, *, generator=None, progress=True, lambda_init: float = 1e5, n_search: int = 10,
          max_iter: int = 1000, lr: float = 1e-2, omega_zero: str = "C", threshold: float | None = None,
          pairwise: bool = False, weights=(1.0, 1.0, 1.0, 1.0, 1.0), select: str = "tau",
          tanh_eps: float = 1e-6, check_every: int = 10, early_abort: bool = True, trace: bool = False,
          batch_size: int | None = None, autocast_dtype=None, channels_last: bool = False) -> AttackResult:
    """Rank II (Sec. III-C2, Eq. 11): the Rank I loss plus **both** constraints of Eq. (10),
    ``λ4 [max_{A1} e^f - min_{B-1} e^f]_+ + λ5 [max_{B1} e^f - min_{A-1} e^f]_+``, so newly negative
    labels rank below every kept negative and newly positive labels above every kept positive.
    {doc}
    >>> res = rank2(model.eval(), x, y, A, B, lambda_init=10.0, n_search=5, max_iter=100)
    >>> res.success.float().mean()

    Introduced in notebooks/05_rank_attacks.ipynb.
    """
    return _rank_attack("rank2", 5, model, x, y, A, B, progress, lambda_init=lambda_init, n_search=n_search,
                        max_iter=max_iter, lr=lr, omega_zero=omega_zero, threshold=threshold, pairwise=pairwise,
                        weights=weights, select=select, tanh_eps=tanh_eps, check_every=check_every,
                        early_abort=early_abort, trace=trace, batch_size=batch_size, autocast_dtype=autocast_dtype, channels_last=channels_last)


rank1.__doc__ = rank1.__doc__.replace("{doc}", _RANK_DOC)
rank2.__doc__ = rank2.__doc__.replace("{doc}", _RANK_DOC)
