"""ML-CW (Sec. III-B1, Eq. 4-5): the Carlini-Wagner attack for label sets, on the shared driver.

Introduced in notebooks/03_ml_cw.ipynb.
"""
from __future__ import annotations

import torch

from .. import validate as V
from ._core import AttackResult, setup
from ._driver import run_search
from .losses import cw_margin, cw_progress, cw_step

HINGE_SPACES = ("probability", "logit")


@torch.enable_grad()  # also when called under torch.no_grad(): every attack takes gradients
def ml_cw(model, x, y, A=None, B=None, *, generator=None, progress=True, lambda_init: float = 1e5, n_search: int = 10,
          max_iter: int = 1000, lr: float = 1e-2, kappa: float = 0.0, hinge_space: str = "probability",
          tanh_eps: float = 1e-6, check_every: int = 10, early_abort: bool = True, trace: bool = False,
          batch_size: int | None = None, autocast_dtype=None, channels_last: bool = False) -> AttackResult:
    """ML-CW (Sec. III-B1, Eq. 4-5): minimise ``||r||_2^2 + λ Σ_{i ∈ A∪B} max(0, y'_i F'_i(x+r) - c_i + κ)``.

    * Constraints on probabilities with the 0.5 threshold (Eq. 3b); ``kappa`` is an optional margin.
      Extension (not in the paper): ``hinge_space="logit"`` writes the same constraints on the logits
      with threshold 0 (Eq. 3a form, ``F_i >= 0.5 <=> logit_i >= 0``). On a model whose float32
      probabilities saturate at exactly 0 or 1 (logits beyond about ±17) the probability hinge has a
      zero gradient and the attack cannot move such labels; the logit hinge still can.
    * Distortion: the *squared* L2 norm, as Carlini & Wagner (Eq. 5 prints ``||r||``; the square is
      smooth at ``r = 0`` and has the same minimisers for the constrained problem).
    * CW change of variables ``x + r = (tanh(w) + 1)/2`` with pixels at exactly 0 or 1 mapped
      through ``(2x - 1)(1 - tanh_eps)``; Adam (lr ``1e-2``) restarted from the clean image for every λ.
    * Binary search on λ per image (paper: λ0 = 1e5, 10 searches x 1000 iterations): after a run
      that satisfied every constraint, the upper bound becomes λ and λ is bisected (halved while no
      lower bound is known); after a failed run, the lower bound becomes λ and λ is x10 while no upper
      bound is known, else bisected.
    * Best example over all runs and iterations: most constraints of Eq. (4), ties -> smaller L2. With
      ``kappa > 0`` a constraint counts (for the best example and for a run's success) only when it holds
      by the margin κ, as Carlini & Wagner count an iterate adversarial only past their confidence κ; the
      returned ``success`` is Eq. (4) at the threshold.
    * Early abort of a run (``early_abort=True``): it has reached its goal, meets every constraint now, and
      neither its loss nor the constraints' distance in logits fell by a relative 1e-4 over the last
      ``max_iter // 10`` steps. ``early_abort=False`` runs every λ run to ``max_iter`` (the plain algorithm).
    * ``trace=True``: ``extras["trace"]`` holds every step of the search as a long table of ``(T,)``
      tensors (``image, iteration, run, lam, loss, distortion, hinge, n_met``; see
      :func:`mlnb.attacks._driver.collect_trace`), e.g. to plot the loss and λ across the search.

    ``param`` is the λ of the returned example (NaN if the clean image was kept);
    ``extras["n_runs_ok"]`` counts successful runs.

    >>> res = ml_cw(model.eval(), x, y, A, B, lambda_init=10.0, n_search=5, max_iter=100)
    >>> res.success, res.extras["l2"]

    Introduced in notebooks/03_ml_cw.ipynb.
    """
    rt, goal = setup(model, x, y, A, B, batch_size=batch_size, autocast_dtype=autocast_dtype,
                     channels_last=channels_last)
    V.check_positive("kappa", kappa, allow_zero=True)
    V.check_choice("hinge_space", hinge_space, HINGE_SPACES)
    if hinge_space == "probability" and kappa >= 0.5:
        raise ValueError(f"kappa={kappa} can never hold in probability space (a probability is at most 0.5 past "
                         "the 0.5 threshold): pass kappa < 0.5, or hinge_space='logit' for a margin in logits")

    def count(logits, S):
        """Constraints met *with the margin κ* (as Carlini & Wagner count an iterate adversarial only
        past their confidence κ): Eq. (4) at 0.5, and ``s (F - 0.5) >= κ`` (``s z >= κ`` in logit space)."""
        met = S.target.constraints_met(logits)
        if kappa > 0:
            met = met & (cw_margin(logits, S.target.y_star, hinge_space) >= kappa)
        return met.sum(1)

    def hinge(logits, S):
        t = S.target
        h, vjp = cw_step(logits, t.y_star, t.constrained, kappa, space=hinge_space)  # cw_hinge, its gradient by hand
        if hinge_space == "logit":
            return h, None, h, vjp  # the run's goal: every constraint counted by `count` (the driver counts once)
        # the progress measure is read at early-abort checks only
        return h, None, lambda: cw_progress(logits, t.y_star, t.constrained, kappa), vjp

    return run_search("ml_cw", rt, x, goal, hinge, progress, "constraints", "constraints", lambda_init=lambda_init,
                      n_search=n_search, max_iter=max_iter, lr=lr, tanh_eps=tanh_eps, check_every=check_every,
                      batch_size=batch_size, early_abort=early_abort, trace=trace, count=count)
