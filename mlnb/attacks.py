"""The six targeted multi-label attacks of Song et al. (ICDM 2018), one signature for all:

``mlnb.attacks.<name>(model, x, y, A, B, *, generator=None, progress=True, **params) -> AttackResult``

* ``model``: an ``nn.Module`` in eval mode mapping ``(N, C, H, W)`` images in ``[0, 1]`` to ``(N, L)``
  logits (probabilities are ``sigmoid(logits)``, threshold 0.5).
* ``x`` ``(N, C, H, W)`` float in ``[0, 1]``; ``y`` ``(N, L)`` bool clean labels; ``A`` (flip) and
  ``B`` (keep) ``(N, L)`` bool, disjoint, ``A`` non-empty for every image.
* common parameters: ``batch_size`` (images processed together, default all; halved automatically
  on out-of-memory), ``autocast_dtype`` (``None`` or ``torch.bfloat16`` for the model's forward),
  ``channels_last`` (feed channels-last inputs). ``generator`` is accepted for a uniform signature;
  no attack here draws random numbers (every attack starts from the clean image).

Every attack is batched (no Python loop over images), follows ``x.device``, is deterministic on
CPU, and gives each image the result it would get alone (to float rounding: batched convolutions and
vectorised exp / tanh may round the last bit differently for another batch length). Such a bit changes an
outcome only where an image ends within rounding of the threshold: ML-DP's paper form lands labels on the
threshold line by construction, so there it is common; the other attacks end past it (ML-DP's greedy form
by its overshoot), so it is rare, but it happens (one image of notebook 04's smoke run succeeds alone and
fails in its batch of 8, its x* 1.4e-5 apart). An image already in the target state is
returned unchanged at zero cost and counts as a success.

Introduced in notebooks/02_baselines_fgs_fg.ipynb, 03_ml_cw.ipynb, 04_ml_deepfool.ipynb and
05_rank_attacks.ipynb.
"""
from __future__ import annotations

import torch

from . import validate as V
from .attack_core import (AttackResult, Runtime, finalize, progress_bar, rank_masks, run_in_chunks,
                          validate_attack_inputs)
from .attack_deepfool import deepfool
from . import probability as P
from .attack_losses import (N_RANK_TERMS, constraints_met, cw_hinge, cw_progress, rank_goal, rank_loss,
                            rank_progress, rank_terms)
from .attack_onestep import grid_scores, pick_per_image, pick_scenario
from .attack_search import optimize
from .labels import OMEGA_ZERO_CHOICES, kendall_criterion

__all__ = ["AttackResult", "ATTACKS", "check_params", "fgs", "fg", "ml_cw", "ml_dp", "rank1", "rank2"]

RANK_SELECT_CHOICES = ("tau", "constraints")
HINGE_SPACES = ("probability", "logit")


def _setup(model, x, y, A, B, batch_size, autocast_dtype, channels_last) -> Runtime:
    validate_attack_inputs(model, x, y, A, B, batch_size=batch_size, autocast_dtype=autocast_dtype,
                           channels_last=channels_last)
    return Runtime(model, autocast_dtype, channels_last, batch_size)


def _one_step_attack(norm, model, x, y, A, B, progress, eps, eps_max, n_eps, batch_size, autocast_dtype,
                     channels_last) -> AttackResult:
    rt = _setup(model, x, y, A, B, batch_size, autocast_dtype, channels_last)
    if eps is None or eps == "scenario":
        V.check_positive("eps_max", eps_max)
        V.check_int("n_eps", n_eps, 2)
        grid = torch.linspace(0, float(eps_max), int(n_eps))
        if eps == "scenario":
            grid = grid[1:]  # one ε > 0 for every image: no clean-image fallback
    elif isinstance(eps, (int, float)) and not isinstance(eps, bool):
        V.check_positive("eps", eps)
        grid = torch.tensor([float(eps)])
    else:
        raise ValueError(f"eps must be None (search ε per image), a number > 0 (one fixed ε) or 'scenario' "
                         f"(one ε for all images of the call, chosen on them), got {eps!r}")
    target, ab = y ^ A, A | B
    bar = progress_bar(x.shape[0] * len(grid), progress, "fgs" if norm == "linf" else "fg")
    with bar:
        def chunk(sl):
            r = grid_scores(rt, x[sl], target[sl], ab[sl], grid, norm)
            bar.update(r["d"].shape[0] * len(grid))
            return r
        r = run_in_chunks(x.shape[0], batch_size, x.device, chunk)
    if eps is None:
        pick = pick_per_image(r["n_met"], r["l2"])
    else:
        pick = torch.full((x.shape[0],), pick_scenario(r["n_met"], ab.sum(1)), dtype=torch.int64, device=x.device)
    chosen = grid.to(x.device)[pick]
    x_adv = (x - chosen.view(-1, 1, 1, 1) * r["d"]).clamp(0, 1)
    curve = {"eps_grid": grid, "success_by_eps": (r["n_met"] == ab.sum(1, keepdim=True)).float().mean(0)}
    return finalize(rt, x, x_adv, y, A, B, (chosen > 0).long(), chosen, curve)


_EPS_DOC = """ε, three ways (``eps``):

    * ``eps=None`` (default, mlnb's form): searched *per image* over ``linspace(0, eps_max, n_eps)``;
      the best ε meets the most constraints of Eq. (4), ties -> smaller L2, then smaller ε. ε = 0 (the
      clean image) is a candidate, so an image the step cannot help is returned clean.
    * ``eps="scenario"`` (the paper's reading of Sec. IV-C, "ε searched in [0, 10]"; its FGS RMSD is
      about ε): *one* ε > 0 for all the images of the call, from ``linspace(0, eps_max, n_eps)[1:]``:
      the most images with every constraint met, then the most constraints met in total, then the
      smaller ε. Results depend on which images are attacked together (the experiment runner passes
      a whole scenario in one call). ``extras["success_by_eps"]`` ``(G,)`` is the success rate per ε.
    * ``eps=<number>``: that ε for every image.
"""


def fgs(model, x, y, A, B, *, generator=None, progress=True, eps: float | str | None = None,
        eps_max: float = 10 / 255, n_eps: int = 21, batch_size: int | None = None, autocast_dtype=None,
        channels_last: bool = False) -> AttackResult:
    """Targeted multi-label Fast Gradient Sign (Sec. IV-C): ``x* = clip(x - ε sign(∇_x loss))``.

    ``loss`` is the per-label sigmoid (BCE-with-logits) loss towards ``y* = y XOR A`` summed over
    ``A ∪ B``; one gradient per image. The paper searches ε in [0, 10] on the 0-255 scale, so
    ``eps_max = 10/255``. {eps_doc}
    ``param`` is the chosen ε; ``iterations`` is 1 (0 where the clean image was kept).

    >>> res = fgs(model.eval(), x, y, A, B, eps_max=10 / 255)
    >>> res.success.float().mean()

    Introduced in notebooks/02_baselines_fgs_fg.ipynb.
    """
    return _one_step_attack("linf", model, x, y, A, B, progress, eps, eps_max, n_eps, batch_size,
                            autocast_dtype, channels_last)


def fg(model, x, y, A, B, *, generator=None, progress=True, eps: float | str | None = None,
       eps_max: float = 10 / 255, n_eps: int = 21, batch_size: int | None = None, autocast_dtype=None,
       channels_last: bool = False) -> AttackResult:
    """Targeted multi-label Fast Gradient (Sec. IV-C): ``x* = clip(x - ε' ∇_x loss / ||∇_x loss||_2)``.

    Same loss as :func:`fgs`. Scale of ε (the paper is ambiguous: its literal ε in [0, 10] on 0-255
    would be an L2 norm of at most 10/255 over a whole 299x299x3 image): here ε is the
    *root-mean-square* step per pixel, ``ε' = ε sqrt(d)`` with ``d = C H W``, so FG's ε, FGS's ε and
    the RMSD metric share one scale and ``eps_max = 10/255`` gives both attacks a comparable budget
    (an FG step of ε has the L2 norm of an FGS step of ε). For the literal reading pass
    ``eps_max = 10 / 255 / sqrt(d)``. {eps_doc}
    >>> res = fg(model.eval(), x, y, A, B)
    >>> res.param  # chosen ε per image

    Introduced in notebooks/02_baselines_fgs_fg.ipynb.
    """
    return _one_step_attack("rms", model, x, y, A, B, progress, eps, eps_max, n_eps, batch_size,
                            autocast_dtype, channels_last)


fgs.__doc__ = fgs.__doc__.replace("{eps_doc}", _EPS_DOC)
fg.__doc__ = fg.__doc__.replace("{eps_doc}", _EPS_DOC)


def _check_search(lambda_init, n_search, max_iter, lr, tanh_eps, check_every) -> None:
    V.check_positive("lambda_init", lambda_init)
    V.check_int("n_search", n_search)
    V.check_int("max_iter", max_iter)
    V.check_positive("lr", lr)
    V.check_positive("tanh_eps", tanh_eps)
    if tanh_eps >= 0.5:
        raise ValueError(f"tanh_eps must be below 0.5, got {tanh_eps}: pass e.g. tanh_eps=1e-6")
    V.check_int("check_every", check_every)


def _search_attack(name, rt, x, y, A, B, aux, hinge, progress, run_select, final_select, *, lambda_init,
                   n_search, max_iter, lr, tanh_eps, check_every, batch_size, count=None) -> AttackResult:
    aux = {"target": y ^ A, "ab": A | B, "ytau": kendall_criterion(y, A, B), **aux}
    bar = progress_bar(x.shape[0] * n_search * max_iter, progress, name)
    with bar:
        def chunk(sl):
            return optimize(rt, x[sl], {k: v[sl] for k, v in aux.items()}, hinge, lambda_init=lambda_init,
                            n_search=n_search, max_iter=max_iter, lr=lr, run_select=run_select,
                            final_select=final_select, tanh_eps=tanh_eps, check_every=check_every, bar=bar,
                            count=count)
        r = run_in_chunks(x.shape[0], batch_size, x.device, chunk)
        bar.update(bar.total - bar.n)
    return finalize(rt, x, r["x_adv"], y, A, B, r["iterations"], r["param"], {"n_runs_ok": r["n_runs_ok"]})


def ml_cw(model, x, y, A, B, *, generator=None, progress=True, lambda_init: float = 1e5, n_search: int = 10,
          max_iter: int = 1000, lr: float = 1e-2, kappa: float = 0.0, hinge_space: str = "probability",
          tanh_eps: float = 1e-6, check_every: int = 10, batch_size: int | None = None, autocast_dtype=None,
          channels_last: bool = False) -> AttackResult:
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
    * Early abort of a run: its loss did not fall by a relative 1e-4 over ``max_iter // 10`` steps.

    ``param`` is the λ of the returned example (NaN if the clean image was kept);
    ``extras["n_runs_ok"]`` counts successful runs.

    >>> res = ml_cw(model.eval(), x, y, A, B, lambda_init=10.0, n_search=5, max_iter=100)
    >>> res.success, res.extras["l2"]

    Introduced in notebooks/03_ml_cw.ipynb.
    """
    rt = _setup(model, x, y, A, B, batch_size, autocast_dtype, channels_last)
    _check_search(lambda_init, n_search, max_iter, lr, tanh_eps, check_every)
    V.check_positive("kappa", kappa, allow_zero=True)
    V.check_choice("hinge_space", hinge_space, HINGE_SPACES)

    def count(logits, S):
        """Constraints met *with the margin κ* (as Carlini & Wagner count an iterate adversarial only
        past their confidence κ): Eq. (4) at 0.5, and ``s (F - 0.5) >= κ`` (``s z >= κ`` in logit space)."""
        met = constraints_met(logits, S["target"], S["ab"])
        if kappa > 0:
            z = logits.double()
            margin = P.prob_margin(logits, S["target"]) if hinge_space == "probability" else torch.where(S["target"], z, -z)
            met = met & (margin >= kappa)
        return met.sum(1)

    def hinge(logits, S):
        h = cw_hinge(logits, S["target"], S["ab"], kappa, space=hinge_space)
        prog = cw_progress(logits, S["target"], S["ab"], kappa if hinge_space == "probability" else 0.0)
        if hinge_space == "logit":
            prog = h
        return h, count(logits, S) == S["ab"].sum(1), prog

    return _search_attack("ml_cw", rt, x, y, A, B, {}, hinge, progress, "constraints", "constraints",
                          lambda_init=lambda_init, n_search=n_search, max_iter=max_iter, lr=lr,
                          tanh_eps=tanh_eps, check_every=check_every, batch_size=batch_size, count=count)


def ml_dp(model, x, y, A, B, *, generator=None, progress=True, max_iter: int = 20, overshoot: float | None = None,
          form: str = "greedy", batch_size: int | None = None, autocast_dtype=None,
          channels_last: bool = False) -> AttackResult:
    """ML-DP, the multi-label DeepFool of Algorithm 1 (Sec. III-B2, Eq. 6-7), in two forms.

    Both iterate ``x_i = clip(x + (1 + overshoot) r_i, 0, 1)``, ``r_{i+1} = r_i + Δr_i`` with the
    minimum-norm step ``Δr = P (P^T P)^+ q`` of the constraints linearised at ``x_i`` (batched, float64,
    one system per image, one Jacobian row per label of ``A ∪ B``), and return the best iterate: most
    constraints of Eq. (4), ties -> strictly smaller ``||x_i - x||_2``, starting from ``x* = x``.

    * ``form="greedy"`` (mlnb's form, default): constraints on the *logits* ``g`` (``F_i >= 0.5 <=>
      g_i >= 0``, Eq. 3a on logits; better conditioned where the sigmoid saturates), only the currently
      violated ones in ``P``; ``overshoot`` 0.02 (DeepFool's; not in the paper); at most ``max_iter``
      steps; an image stops once every constraint holds.
    * ``form="paper"``: Algorithm 1 and Eq. (6)-(7) as printed: the probabilities ``F`` linearised
      (``∇F_i = σ'(z_i) ∇z_i``, ``σ'`` and ``F_i - 0.5 = tanh(z_i/2)/2`` exact from the logits in
      float64) and *all* ``|A| + |B|`` constraints as equalities ``F_i + ∇F_i^T Δr = 0.5``, satisfied
      ``B`` labels included (they are dragged to the threshold too). Readings of the printed algorithm:
      ``overshoot`` 0 (the paper has none); ``while i <= maxiter`` from ``i = 0``: ``max_iter + 1``
      steps (``max_iter=0`` allowed: one step), no early stop (an image only stops when nothing can
      change: ``x`` already in the target state, or ``Δr = 0``); line 8's ``x_{i+1} = x_i + r_i`` is read
      ``x_{i+1} = x + r_{i+1} = x_i + Δr_i`` (the literal sum re-adds the whole perturbation each step
      and makes ``x_1 = x``), and lines 13/15's ``x* = x_i, r* = r_i`` as ``x_{i+1}, r_{i+1}``: the iterate
      whose constraints ``Cst_i`` were just counted; line 14's ``||x_i||_2`` is the perturbation norm
      ``||x_{i+1} - x||_2``; ``(P^T P)^{-1}`` is a pseudo-inverse; iterates are clipped to the image box
      ``[0, 1]`` (not in the paper); a constraint holds as everywhere in mlnb (logit ``>= 0`` positive),
      so a label exactly at 0.5 counts for a positive target only (Eq. 4's ``<=`` would count it both ways).

    The pseudo-inverse cuts singular values of the row-normalised ``P`` below 1e-5 of the largest
    (float32 noise), so nearly collinear constraints are both honoured (the former cut, 1e-6 on
    ``P^T P``, i.e. 1e-3 on ``P``, could drop one of them); all-zero Jacobians give ``Δr = 0``.

    The paper form lands every label on the 0.5 line, where float32 rounding decides each
    constraint; rounding differs between batch sizes, so unlike every other attack its result for an
    image can depend on the batch (the runner attacks it in one call per scenario).

    ``param`` is NaN (no trade-off parameter); ``iterations`` counts the steps taken.

    >>> res = ml_dp(model.eval(), x, y, A, B, max_iter=20, form="paper")
    >>> res.n_satisfied

    Introduced in notebooks/04_ml_deepfool.ipynb.
    """
    from .attack_deepfool import ML_DP_FORMS, n_steps

    rt = _setup(model, x, y, A, B, batch_size, autocast_dtype, channels_last)
    V.check_choice("form", form, ML_DP_FORMS)
    V.check_int("max_iter", max_iter, 0 if form == "paper" else 1)
    if overshoot is None:
        overshoot = 0.0 if form == "paper" else 0.02
    V.check_positive("overshoot", overshoot, allow_zero=True)
    target, ab = y ^ A, A | B
    bar = progress_bar(x.shape[0] * (n_steps(max_iter, form) + 1), progress, "ml_dp")
    with bar:
        r = run_in_chunks(x.shape[0], batch_size, x.device,
                          lambda sl: deepfool(rt, x[sl], target[sl], ab[sl], max_iter=max_iter,
                                              overshoot=overshoot, bar=bar, form=form))
        bar.update(bar.total - bar.n)
    nan = torch.full((x.shape[0],), torch.nan, device=x.device)
    return finalize(rt, x, r["x_adv"], y, A, B, r["iterations"], nan, {})


def _rank_attack(name, n_terms, model, x, y, A, B, progress, *, lambda_init, n_search, max_iter, lr,
                 omega_zero, threshold, pairwise, weights, select, tanh_eps, check_every, batch_size,
                 autocast_dtype, channels_last) -> AttackResult:
    rt = _setup(model, x, y, A, B, batch_size, autocast_dtype, channels_last)
    _check_search(lambda_init, n_search, max_iter, lr, tanh_eps, check_every)
    V.check_choice("omega_zero", omega_zero, OMEGA_ZERO_CHOICES)
    V.check_choice("select", select, RANK_SELECT_CHOICES)
    if threshold is not None and not (isinstance(threshold, (int, float)) and 0 < threshold < 1):
        raise ValueError(f"threshold must be None or a probability in (0, 1), got {threshold!r}")
    if len(weights) != n_terms or any(not isinstance(v, (int, float)) or v < 0 for v in weights) or not any(weights):
        raise ValueError(f"weights must be {n_terms} non-negative numbers, not all 0 "
                         f"(λ1..λ{n_terms} relative to λ), got {weights!r}")
    w = torch.zeros(N_RANK_TERMS, dtype=torch.float32, device=x.device)
    w[:n_terms] = torch.tensor([float(v) for v in weights])

    def hinge(logits, S):
        sets = (S["om"], S["op"], S["oz"], S["A1"], S["Bm1"], S["B1"], S["Am1"])
        h = rank_loss(rank_terms(logits, *sets, pairwise=pairwise, threshold=threshold), w)
        return (h, rank_goal(logits, *sets, w, threshold=threshold),
                rank_progress(logits, *sets, w, threshold=threshold))

    final = "tau" if select == "tau" else "constraints_tau"
    return _search_attack(name, rt, x, y, A, B, rank_masks(y, A, B, omega_zero), hinge, progress, "tau", final,
                          lambda_init=lambda_init, n_search=n_search, max_iter=max_iter, lr=lr,
                          tanh_eps=tanh_eps, check_every=check_every, batch_size=batch_size)


_RANK_DOC = """

    * Ranking sets (Table I): ``Ω- = A1 ∪ B-1`` (to rank low), ``Ω+ = A-1 ∪ B1`` (to rank high),
      ``Ω◦`` = ``omega_zero`` in {"C" (paper), "C-1", "C1", "empty"}, or ``threshold=t`` to replace the
      soft middle ``f_γ`` by the hard threshold ``t`` (Sec. III-A2). ``pairwise=True`` uses the full
      pairwise Eq. (8) instead of the max/min of Eq. (9).
    * Scores are probabilities and the terms compare ``e^{f}`` as printed. A term whose label set is
      empty for an image contributes 0 for it. λ_i = λ x ``weights[i]`` (the paper: all equal).
    * Distortion: squared L2 of the perturbation, CW change of variables and Adam, binary search on λ
      exactly as :func:`ml_cw`; a run counts as successful when every ranking constraint its loss
      encodes holds (the hinge part is 0).
    * Selection (Sec. III-C2): within a λ run, the iterate with the highest Kendall tau-b between the
      scores (logits: same ranking, no float32 ties) and ``y_tau``, ties -> smaller L2. Across λ:
      ``select="tau"`` (paper) keeps the same rule; ``select="constraints"`` prefers the most
      constraints of Eq. (4), then tau, then smaller L2.
"""


def rank1(model, x, y, A, B, *, generator=None, progress=True, lambda_init: float = 1e5, n_search: int = 10,
          max_iter: int = 1000, lr: float = 1e-2, omega_zero: str = "C", threshold: float | None = None,
          pairwise: bool = False, weights=(1.0, 1.0, 1.0), select: str = "tau", tanh_eps: float = 1e-6,
          check_every: int = 10, batch_size: int | None = None, autocast_dtype=None,
          channels_last: bool = False) -> AttackResult:
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
                        batch_size=batch_size, autocast_dtype=autocast_dtype, channels_last=channels_last)


def rank2(model, x, y, A, B, *, generator=None, progress=True, lambda_init: float = 1e5, n_search: int = 10,
          max_iter: int = 1000, lr: float = 1e-2, omega_zero: str = "C", threshold: float | None = None,
          pairwise: bool = False, weights=(1.0, 1.0, 1.0, 1.0, 1.0), select: str = "tau",
          tanh_eps: float = 1e-6, check_every: int = 10, batch_size: int | None = None, autocast_dtype=None,
          channels_last: bool = False) -> AttackResult:
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
                        batch_size=batch_size, autocast_dtype=autocast_dtype, channels_last=channels_last)


rank1.__doc__ = rank1.__doc__.replace("{doc}", _RANK_DOC)
rank2.__doc__ = rank2.__doc__.replace("{doc}", _RANK_DOC)

ATTACKS = {"fgs": fgs, "fg": fg, "ml_cw": ml_cw, "ml_dp": ml_dp, "rank1": rank1, "rank2": rank2}


def check_params(attack: str, params: dict) -> None:
    """Raise before any work when ``params`` holds a keyword that is not a tunable parameter of
    ``ATTACKS[attack]`` (a typo such as ``max_iters`` would otherwise fail only after the target
    model is trained). ``generator`` and ``progress`` are set by the caller, not by ``params``."""
    import inspect

    V.check_choice("attack", attack, ATTACKS)
    signature = inspect.signature(ATTACKS[attack]).parameters
    if any(p.kind is p.VAR_KEYWORD for p in signature.values()):
        return  # a wrapper taking **kwargs: nothing to check here
    valid = [k for k, p in signature.items() if p.kind is p.KEYWORD_ONLY and k not in ("generator", "progress")]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for attack {attack!r}: valid parameters are "
                         f"{', '.join(valid)}")
