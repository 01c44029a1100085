"""MLA-LP (Zhou et al., "Generating Multi-label Adversarial Examples by Linear Programming", IJCNN 2020),
batched, with the open solver HiGHS (``scipy.optimize.linprog``) instead of MOSEK.

At the current iterate ``x_i`` every label ``j`` of ``A ∪ B`` has its binary cross-entropy towards the
target labels ``y*`` linearised, ``ℓ_j(x_i + r) ≈ ℓ_j + ∇ℓ_j^T r``, and asked to drop to the loss at a
per-label confidence threshold ``τ_j`` (the BCE of probability ``1 - τ_j`` on the target side,
``ℓ*_j = -log(1 - τ_j)``; ``τ = 0.5`` is the decision threshold). The smallest L∞ step doing so is a
linear program (variables ``r`` and ``t``, ``|r_p| <= t``, one inequality per label)::

    min t   s.t.   ∇ℓ_j^T r <= ℓ*_j - ℓ_j  (j ∈ A ∪ B),   -t <= r_p <= t,   t <= 1.

It is solved in the equivalent form with ``K`` rows instead of ``K + 2d`` (``u = r / t``, ``s = 1 / t``)::

    max s   s.t.   ∇ℓ_j^T u - (ℓ*_j - ℓ_j) s <= 0,   -1 <= u_p <= 1,   s >= 1,

whose optimum gives ``t = 1 / s`` and ``r = u / s`` (the ``|r_p| <= t`` rows became variable bounds).
The images of a batch share each model call (one Jacobian pass per label for all active images); their
LPs are solved in the same process, one per image by default or ``lp_batch`` per block-diagonal sparse LP.

Introduced in notebooks/13_successors.ipynb.
"""
from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from scipy.optimize import linprog

from .. import validate as V
from ._core import AttackResult, finalize, flush_finished, progress_bar, run_in_chunks, setup
from .deepfool import jacobian_rows

TAU_START, TAU_STEP, TAU_MIN = 0.5, 0.05, 0.1  # the paper's thresholds: 0.5, lowered by 0.05 down to 0.1
S_MAX = 1e9  # s = 1 / t is capped: a step below 1e-9 in L∞ is no step


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


def solve_steps(grad: torch.Tensor, rhs: torch.Tensor, rows: torch.Tensor, lp_batch: int | None = None):
    """The L∞-minimal steps ``r`` ``(n, d)`` float64 with ``grad_j^T r <= rhs_j`` for the ``rows`` ``(n, L)``
    of each image, ``|r| <= 1``; and ``failed`` ``(n,)`` bool (the LP infeasible or not solved: ``r = 0``).

    Each row is scaled by its largest entry (same feasible set, better conditioned); a row that no step
    with ``|r| <= 1`` can violate (``rhs_j >= ||grad_j||_1``) is dropped; a zero row with ``rhs < 0`` makes
    the image infeasible; an image whose rows all hold at ``r = 0`` gets ``r = 0``. ``lp_batch`` images
    share one block-diagonal sparse LP (None: all of them);
    where a shared LP fails, its images are solved one at a time to find the failing ones. An LP may have
    several optimal vertices (pixels whose columns are proportional in the binding rows); which one HiGHS
    returns then depends on its pivoting, so a block-diagonal LP can answer an image differently from
    its own LP (same ``||r||_∞``, another ``r``).

    Introduced in notebooks/13_successors.ipynb (through :func:`mla_lp`)."""
    g = grad.cpu().numpy()
    b = rhs.cpu().numpy()
    n, L, d = g.shape
    scale = np.abs(g).max(axis=2)
    l1 = np.abs(g).sum(axis=2)
    keep = rows.cpu().numpy() & (b < l1)
    bad = (keep & (scale == 0)).any(axis=1)  # a zero gradient cannot lower a loss above its goal
    keep &= scale > 0
    steps, failed = np.zeros((n, d)), bad.copy()
    todo = [i for i in range(n) if not bad[i] and (keep[i] & (b[i] < 0)).any()]  # else r = 0 is optimal
    size = len(todo) if lp_batch is None else lp_batch
    for start in range(0, len(todo), max(size, 1)):
        group = todo[start:start + max(size, 1)]
        ok, sol = _solve_block(g, b, scale, keep, group)
        if not ok and len(group) > 1:
            for i in group:
                ok_i, sol_i = _solve_block(g, b, scale, keep, [i])
                steps[i], failed[i] = (sol_i[0] if ok_i else 0.0), not ok_i
        elif ok:
            steps[group] = sol
        else:
            failed[group] = True
    out = torch.from_numpy(steps).to(grad.device)
    return out, torch.from_numpy(failed).to(grad.device)


def _solve_block(g, b, scale, keep, group):
    """One block-diagonal LP over the images ``group``: ``(solved, r (len(group), d))``. A pixel whose
    column is zero in every kept row of its image leaves the LP (``r_p = 0``): it changes no constraint,
    and left in, its ``u_p`` could sit at either bound of an optimum, making the LP's answer depend on the
    other images of the block."""
    d = g.shape[2]
    blocks, cols, bounds = [], [], []
    for i in group:
        k = keep[i]
        rows = g[i, k] / scale[i, k, None]
        live = (rows != 0).any(axis=0)
        blocks.append(sp.csr_matrix(np.concatenate([rows[:, live], -(b[i, k] / scale[i, k])[:, None]], axis=1)))
        cols.append(live)
        bounds.append(np.stack([np.r_[np.full(live.sum(), -1.0), 1.0], np.r_[np.full(live.sum(), 1.0), S_MAX]], 1))
    M = sp.block_diag(blocks, format="csc")
    cost = np.concatenate([np.r_[np.zeros(live.sum()), -1.0] for live in cols])
    res = linprog(cost, A_ub=M, b_ub=np.zeros(M.shape[0]), bounds=np.concatenate(bounds),
                  method="highs-ds", options={"presolve": False})
    if res.status != 0 or res.x is None:
        return False, None
    out, at = np.zeros((len(group), d)), 0
    for j, live in enumerate(cols):
        n_live = int(live.sum())
        out[j, live] = res.x[at:at + n_live] / res.x[at + n_live]  # r = u / s
        at += n_live + 1
    return True, out


def mla_lp_kernel(rt, x: torch.Tensor, goal, *, max_iter: int, lp_batch: int | None, bar) -> dict:
    """MLA-LP for ``x`` ``(n, C, H, W)`` and its Target ``goal``: ``x_{i+1} = clip(x_i + r_i, 0, 1)`` with
    ``r_i`` from :func:`solve_steps`, at most ``max_iter`` steps. A constrained label whose target-side
    logit did not grow in the last step has its ``τ`` lowered by 0.05 (not below 0.1). Best iterate: most
    constraints met, ties -> smaller L∞ distortion, from ``x* = x``. An image stops when every
    constraint holds, or when its LP fails (then ``x_adv = x``, ``lp_failed``). Returns ``x_adv``,
    ``iterations``, ``lp_failed``, ``tau``.

    Introduced in notebooks/13_successors.ipynb (through :func:`mla_lp`)."""
    n, dev = x.shape[0], x.device
    cols = goal.constrained.any(0).nonzero().flatten().tolist()
    sign = goal.y_star.double() * 2 - 1
    out = {"x_adv": x.clone(), "iterations": torch.zeros(n, dtype=torch.int64, device=dev),
           "lp_failed": torch.zeros(n, dtype=torch.bool, device=dev),
           "tau": torch.full(goal.y.shape, TAU_START, dtype=torch.float64, device=dev)}
    S = {"x0": x, "xi": x.clone(), "goal": goal, "sign": sign, "idx": torch.arange(n, device=dev),
         "tau": out["tau"].clone(), "prev": torch.full(goal.y.shape, -torch.inf, dtype=torch.float64, device=dev),
         "b_x": x.clone(), "b_nsat": torch.full((n,), -1, dtype=torch.int64, device=dev),
         "b_dist": torch.full((n,), torch.inf, device=dev), "iters": torch.zeros(n, dtype=torch.int64, device=dev),
         "failed": torch.zeros(n, dtype=torch.bool, device=dev)}
    fields = {"x_adv": "b_x", "iterations": "iters", "lp_failed": "failed", "tau": "tau"}
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
            step, failed = solve_steps(grad, rhs, S["goal"].constrained, lp_batch)
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


def mla_lp(model, x, y, A=None, B=None, *, generator=None, progress=True, max_iter: int = 20,
           lp_batch: int | None = 1, batch_size: int | None = None, autocast_dtype=None,
           channels_last: bool = False) -> AttackResult:
    """MLA-LP (Zhou et al., IJCNN 2020): iterated L∞-minimal linear programs on the linearised BCE.

    ``x`` ``(N, C, H, W)`` in ``[0, 1]``; ``y, A, B`` ``(N, L)`` bool or a :class:`~mlnb.target.Target`.
    Each step solves the LP of the module docstring with HiGHS (``scipy.optimize.linprog``, dual
    simplex) for the still-active images, in this process, ``lp_batch`` images per block-diagonal sparse
    LP (None: all of them). The default, 1, solves one LP per image: measured as fast as the block-diagonal
    LP (``benchmarks/successors_batching.py``: HiGHS's time grows with the block) and, unlike it,
    independent of the other images where an LP has several optimal vertices. Then applies the clipped
    step. Thresholds start at 0.5 and drop by 0.05 (to 0.1) for a label that stalls. The returned
    example is the best iterate: most constraints of Eq. (4) met, ties -> smaller L∞ norm.

    An LP that is infeasible or fails for an image ends that image's attack: it is returned **clean**
    (``x_adv = x``), flagged in ``extras["lp_failed"]`` ``(N,)`` and counted in ``extras["n_lp_failed"]``,
    and a ``RuntimeWarning`` names the images. ``extras["linf"]`` ``(N,)``: L∞ of the perturbation;
    ``extras["tau"]`` ``(N, L)``: the final thresholds. ``param`` is NaN; ``iterations`` counts LP steps.
    ``generator`` is accepted for the uniform signature (nothing is random).

    Per-image independence holds to float rounding, as for the six attacks, but MLA-LP amplifies it more:
    its LPs often have several optimal vertices (a small CNN's gradient columns are often proportional),
    so a last-bit difference in an image's Jacobian between a batch and a batch of one can make HiGHS
    return another vertex and the image follow another path (``benchmarks/successors_batching.py``
    counts the images whose outcome differs alone).

    >>> res = mla_lp(model.eval(), x, target, max_iter=20)
    >>> res.success, res.extras["linf"], res.extras["n_lp_failed"]

    Introduced in notebooks/13_successors.ipynb.
    """
    rt, goal = setup(model, x, y, A, B, batch_size=batch_size, autocast_dtype=autocast_dtype,
                     channels_last=channels_last)
    V.check_int("max_iter", max_iter, 1)
    if lp_batch is not None:
        V.check_positive("lp_batch", lp_batch, integer=True)
    bar = progress_bar(x.shape[0] * (max_iter + 1), progress, "mla_lp")
    with bar:
        r = run_in_chunks(x.shape[0], batch_size, x.device,
                          lambda sl: mla_lp_kernel(rt, x[sl], goal[sl], max_iter=max_iter, lp_batch=lp_batch,
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
                     "n_lp_failed": int(failed.sum()), "tau": r["tau"]})
