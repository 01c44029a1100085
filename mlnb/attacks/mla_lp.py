"""MLA-LP (Zhou et al., "Generating Multi-label Adversarial Examples by Linear Programming", IJCNN 2020),
batched, with open solvers instead of MOSEK: a batched dual simplex (:mod:`mlnb.attacks.linf_lp`) or HiGHS
(``scipy.optimize.linprog``).

At the current iterate ``x_i`` every label ``j`` of ``A ∪ B`` has its binary cross-entropy towards the
target labels ``y*`` linearised, ``ℓ_j(x_i + r) ≈ ℓ_j + ∇ℓ_j^T r``, and asked to drop to the loss at a
per-label confidence threshold ``τ_j`` (the BCE of probability ``1 - τ_j`` on the target side,
``ℓ*_j = -log(1 - τ_j)``; ``τ = 0.5`` is the decision threshold). The smallest L∞ step doing so is a
linear program (variables ``r`` and ``t``, ``|r_p| <= t``, one inequality per label)::

    min t   s.t.   ∇ℓ_j^T r <= ℓ*_j - ℓ_j  (j ∈ A ∪ B),   -t <= r_p <= t,   t <= 1.

It is solved in the equivalent form with ``K`` rows instead of ``K + 2d`` (``u = r / t``, ``s = 1 / t``)::

    max s   s.t.   ∇ℓ_j^T u - (ℓ*_j - ℓ_j) s <= 0,   -1 <= u_p <= 1,   s >= 1,

whose optimum gives ``t = 1 / s`` and ``r = u / s`` (the ``|r_p| <= t`` rows became variable bounds).
The images of a batch share each model call (one Jacobian pass per label for all active images) and,
with ``solver="simplex"`` (the default), each LP step: every image's LP is pivoted by the same batched
kernels, each answer certified by weak duality (else HiGHS solves that LP); ``solver="highs"`` solves one
LP per image with HiGHS, in the same process.

Introduced in notebooks/13_successors.ipynb.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from .. import validate as V
from ._core import AttackResult, finalize, flush_finished, progress_bar, run_in_chunks, setup
from .deepfool import jacobian_rows
from .linf_lp import SOLVERS, solve_steps

TAU_START, TAU_STEP, TAU_MIN = 0.5, 0.05, 0.1  # the paper's thresholds: 0.5, lowered by 0.05 down to 0.1


def bce_rows(logits: torch.Tensor, J: torch.Tensor, y_star: torch.Tensor, tau: torch.Tensor):
    """The linearised constraints of one MLA-LP step, exactly from the logits, in float64.

    ``logits`` ``(n, L)``, ``J`` ``(n, L, d)`` rows ``∂z_j/∂x``, ``y_star`` ``(n, L)`` bool, ``tau``
    ``(n, L)``. Returns ``grad`` ``(n, L, d)`` = ``∇ℓ_j = (σ(z_j) - y*_j) ∇z_j`` and ``rhs`` ``(n, L)`` =
    ``ℓ*_j - ℓ_j`` with ``ℓ_j`` = ``binary_cross_entropy_with_logits(z_j, y*_j)`` (never the log of a
    float32 probability, which is exactly 0 or 1 beyond a logit of about ±17).

    Introduced in notebooks/13_successors.ipynb (its from-scratch cell writes the same rows)."""
    z = logits.double()
    t = y_star.double()
    loss = F.binary_cross_entropy_with_logits(z, t, reduction="none")
    dz = torch.where(y_star, -torch.sigmoid(-z), torch.sigmoid(z))  # σ(z) - y*, without σ(z) - 1 rounding to 0
    goal = -torch.log1p(-tau.double())
    return dz[:, :, None] * J.double(), goal - loss


def mla_lp_kernel(rt, x: torch.Tensor, goal, *, max_iter: int, solver: str, bar) -> dict:
    """MLA-LP for ``x`` ``(n, C, H, W)`` and its Target ``goal``: ``x_{i+1} = clip(x_i + r_i, 0, 1)`` with
    ``r_i`` from :func:`solve_steps`, at most ``max_iter`` steps. A constrained label whose target-side
    logit did not grow in the last step has its ``τ`` lowered by 0.05 (not below 0.1). Best iterate: most
    constraints met, ties -> smaller L∞ distortion, from ``x* = x``. An image stops when every
    constraint holds, or when its LP fails (then ``x_adv = x``, ``lp_failed``). Returns ``x_adv``,
    ``iterations``, ``lp_failed``, ``tau`` and ``lp_highs`` (LPs of the image the simplex left to HiGHS).

    Introduced in notebooks/13_successors.ipynb (through :func:`mla_lp`)."""
    n, dev = x.shape[0], x.device
    cols = goal.constrained.any(0).nonzero().flatten().tolist()
    sign = goal.y_star.double() * 2 - 1
    out = {"x_adv": x.clone(), "iterations": torch.zeros(n, dtype=torch.int64, device=dev),
           "lp_failed": torch.zeros(n, dtype=torch.bool, device=dev),
           "lp_highs": torch.zeros(n, dtype=torch.int64, device=dev),
           "tau": torch.full(goal.y.shape, TAU_START, dtype=torch.float64, device=dev)}
    S = {"x0": x, "xi": x.clone(), "goal": goal, "sign": sign, "idx": torch.arange(n, device=dev),
         "tau": out["tau"].clone(), "prev": torch.full(goal.y.shape, -torch.inf, dtype=torch.float64, device=dev),
         "b_x": x.clone(), "b_nsat": torch.full((n,), -1, dtype=torch.int64, device=dev),
         "b_dist": torch.full((n,), torch.inf, device=dev), "iters": torch.zeros(n, dtype=torch.int64, device=dev),
         "failed": torch.zeros(n, dtype=torch.bool, device=dev), "highs": torch.zeros(n, dtype=torch.int64, device=dev)}
    fields = {"x_adv": "b_x", "iterations": "iters", "lp_failed": "failed", "tau": "tau", "lp_highs": "highs"}
    for it in range(max_iter + 1):
        last = it == max_iter
        if last:
            with torch.no_grad():
                logits = rt.logits(S["xi"])
        else:
            logits, J = jacobian_rows(rt, S["xi"], cols)
        nsat = S["goal"].n_satisfied(logits)
        dist = (S["xi"] - S["x0"]).flatten(1).abs().amax(dim=1)
        imp = (nsat > S["b_nsat"]) | ((nsat == S["b_nsat"]) & (dist < S["b_dist"]))
        S["b_x"] = torch.where(imp.view(-1, 1, 1, 1), S["xi"], S["b_x"])
        S["b_nsat"] = torch.where(imp, nsat, S["b_nsat"])
        S["b_dist"] = torch.where(imp, dist, S["b_dist"])
        margin = S["sign"] * logits.double()
        unmet = S["goal"].constrained & ~S["goal"].constraints_met(logits)
        stalled = unmet & (margin <= S["prev"])
        S["tau"] = torch.where(stalled, (S["tau"] - TAU_STEP).clamp(min=TAU_MIN), S["tau"])
        S["prev"] = margin
        done = torch.ones_like(imp) if last else nsat == S["goal"].n_constraints
        if not last:
            grad, rhs = bce_rows(logits, J, S["goal"].y_star, S["tau"])
            step, failed, by_highs = solve_steps(grad, rhs, S["goal"].constrained, solver)
            S["highs"] = S["highs"] + by_highs.to(torch.int64)
            S["failed"] = failed & ~done
            S["b_x"] = torch.where(S["failed"].view(-1, 1, 1, 1), S["x0"], S["b_x"])
            done = done | S["failed"]
        n_before = int(S["idx"].numel())
        keep = (~done).nonzero().flatten()
        S = flush_finished(S, out, done, fields)
        bar.update(n_before)
        if S["idx"].numel() == 0:
            break
        step = step.index_select(0, keep).to(S["xi"].dtype).view_as(S["xi"])
        S["xi"] = (S["xi"] + step).clamp(0, 1)
        S["iters"] = S["iters"] + 1
    return out


@torch.enable_grad()  # also when called under torch.no_grad(): every attack takes gradients
def mla_lp(model, x, y, A=None, B=None, *, generator=None, progress=True, max_iter: int = 20,
           solver: str = "simplex", batch_size: int | None = None, autocast_dtype=None,
           channels_last: bool = False) -> AttackResult:
    """MLA-LP (Zhou et al., IJCNN 2020): iterated L∞-minimal linear programs on the linearised BCE.

    ``x`` ``(N, C, H, W)`` in ``[0, 1]``; ``y, A, B`` ``(N, L)`` bool or a :class:`~mlnb.target.Target`.
    Each step solves the LP of the module docstring for the still-active images. ``solver="simplex"``
    (default): one batched bounded dual simplex for all of them (:func:`mlnb.attacks.linf_lp.simplex_steps`),
    each answer certified optimal by weak duality; an LP it cannot certify goes to HiGHS, counted per image
    in ``extras["lp_highs"]``. ``solver="highs"``: HiGHS's dual simplex (``scipy.optimize.linprog``), one
    LP per image, as the reference solves one LP per image with MOSEK. The two give the same ``||r||_∞`` at
    every LP (tested); where an LP has several optimal vertices they may return different steps. Then
    applies the clipped step. Thresholds start at 0.5 and drop by 0.05 (to 0.1) for a label that stalls.
    The returned example is the best iterate: most constraints of Eq. (4) met, ties -> smaller L∞ norm.

    An LP that is infeasible or fails for an image ends that image's attack: it is returned **clean**
    (``x_adv = x``), flagged in ``extras["lp_failed"]`` ``(N,)`` and counted in ``extras["n_lp_failed"]``,
    and a ``RuntimeWarning`` names the images. ``extras["linf"]`` ``(N,)``: L∞ of the perturbation;
    ``extras["tau"]`` ``(N, L)``: the final thresholds. ``param`` is NaN; ``iterations`` counts LP steps.
    ``generator`` is accepted for the uniform signature (nothing is random).

    Per-image independence: each image's LP is pivoted on its own (the batched simplex gives an image the
    bits it gives it alone, tested), so only the model's convolutions can differ, in the last bits, between
    a batch and a batch of one, as for the six attacks. MLA-LP amplifies such a difference more: its LPs
    often have several optimal vertices (a small CNN's gradient columns are often proportional), so it can
    select another vertex and the image follow another path (``benchmarks/successors_batching.py`` counts
    the images whose outcome differs alone). Even a unique optimum leaves a second door: at τ = 0.5 the
    linearised step aims a label at logit 0 (the reference adds no overshoot), and the BCE it linearises is
    convex, so on a model that is linear, or nearly so, each step stops short of 0 and the gap shrinks about
    twenty-fold per step without crossing; the label crosses once the margin stalls and the stall rule lowers
    τ. When it stalls is decided by the last bits of the model's output (a batch can give 1.9e-9 where the
    image alone gives -1e-9), so a small ``max_iter`` can end such an image a step before or after it crosses.

    >>> res = mla_lp(model.eval(), x, target, max_iter=20)
    >>> res.success, res.extras["linf"], res.extras["n_lp_failed"]

    Introduced in notebooks/13_successors.ipynb.
    """
    rt, goal = setup(model, x, y, A, B, batch_size=batch_size, autocast_dtype=autocast_dtype,
                     channels_last=channels_last)
    V.check_int("max_iter", max_iter, 1)
    V.check_choice("solver", solver, SOLVERS)
    bar = progress_bar(x.shape[0] * (max_iter + 1), progress, "mla_lp")
    with bar:
        r = run_in_chunks(x.shape[0], batch_size, x.device,
                          lambda sl: mla_lp_kernel(rt, x[sl], goal[sl], max_iter=max_iter, solver=solver,
                                                   bar=bar))
        bar.update(bar.total - bar.n)
    failed = r["lp_failed"]
    if bool(failed.any()):
        bad = failed.nonzero().flatten().tolist()
        warnings.warn(f"mla_lp: the linear program was infeasible or failed for {len(bad)} image(s) {bad[:10]}; "
                      f"they are returned clean (x_adv = x) and flagged in extras['lp_failed']",
                      RuntimeWarning, stacklevel=2)
    nan = torch.full((x.shape[0],), torch.nan, device=x.device)
    x_adv = torch.where(failed.view(-1, 1, 1, 1), x, r["x_adv"])
    return finalize(rt, x, x_adv, goal, r["iterations"], nan,
                    {"linf": (x_adv - x).flatten(1).abs().amax(dim=1), "lp_failed": failed,
                     "n_lp_failed": int(failed.sum()), "tau": r["tau"], "lp_highs": r["lp_highs"]})
