"""The L∞-minimal step of MLA-LP as a linear program, solved for a whole batch at once.

For one image, with constraint rows ``g_k`` (``K`` of them, ``d`` pixels) and right-hand sides ``b_k``::

    min t   s.t.   g_k^T r <= b_k,   -t <= r_p <= t,   t <= 1,

written with ``u = r / t``, ``s = 1 / t`` as the LP with ``K`` rows and bounded variables::

    max s   s.t.   g_k^T u - b_k s + w_k = 0,   -1 <= u_p <= 1,   1 <= s <= S_MAX,   w_k >= 0.

:func:`simplex_steps` solves it for ``n`` images together with the **bounded dual simplex method**
(Koberstein, "The dual simplex method, techniques for a fast and stable implementation", 2005: the
bound-flipping ratio test, dual steepest-edge pricing with exact row norms). The start is the slack
basis with ``s`` at its upper bound, which is dual feasible; each iteration takes the most infeasible
basic variable out (by infeasibility over the norm of its row of ``B^{-1}``), passes the breakpoints of
the dual objective along that row, flipping the nonbasic ``u_p`` it passes to their other bound, and
brings in the variable at the breakpoint where the slope turns. ``K`` is small (the labels of ``A ∪ B``),
so ``B^{-1}`` is recomputed each iteration from the ``K`` basic columns (no eta file to drift) and the
basic values from the nonbasic ones. Every image runs its own pivots: the batch only shares the kernels
(``(n, 2, K) @ (n, K, d)`` products, row-wise selections and sorts), so an image takes the pivots it takes
alone (tested); a batched matrix product may round the last bits of its values differently (BLAS
blocking), as the model's convolutions do. LPs that are done leave the batch. On the CPU the simplex runs
on :data:`SIMPLEX_CPU_THREADS` thread: its kernels are small, and two OpenMP threads wait on each other
once another process takes a core (measured 25x slower on a busy 2-core machine).

Each answer is **certified**: the step must satisfy every row (``g_k^T r <= b_k`` to a relative 1e-9)
and its ``t`` must match, to a relative :data:`GAP_TOL`, the lower bound ``-b^T λ / ||G^T λ||_1`` of the
dual multipliers ``λ >= 0`` the final basis gives (weak duality: any ``λ >= 0`` bounds ``t`` from below,
whatever the code that found it). An image that is not certified (iteration cap, ill-conditioned basis)
is solved again by HiGHS (``scipy.optimize.linprog``), one LP for that image; an LP found infeasible
by the simplex (the dual is unbounded: no step with ``|r| <= 1``) is confirmed by HiGHS the same way.

Where the LP has several optimal vertices (pixels whose columns are proportional in the binding rows)
the simplex and HiGHS may return different steps of the same ``||r||_∞``. A pixel whose column is zero
in every row gets ``r_p = 0``, as in the HiGHS form (its ``u_p`` sits at a bound but changes nothing).

Introduced in notebooks/13_successors.ipynb (through :func:`mlnb.attacks.mla_lp`).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import linprog

from ..utils import cpu_threads

S_MAX = 1e9  # s = 1 / t is capped: a step below 1e-9 in L∞ is no step
FEAS_TOL = 1e-9  # primal feasibility of the basic variables, relative to max(1, |value|)
PIVOT_TOL = 1e-9  # entries of the pivot row smaller than this never enter
GAP_TOL = 1e-7  # certificate: t from the primal within this relative distance of the dual bound
MAX_PIVOTS_PER_ROW = 50  # iteration cap: 50 K pivots (a few K are usual), then HiGHS
SOLVERS = ("simplex", "highs")
SIMPLEX_CPU_THREADS = 1  # the simplex's many small kernels: one thread on CPU (two wait on each other on a busy CPU)


class LPSteps(NamedTuple):
    """What :func:`solve_steps` returns, per image: the step ``r`` ``(n, d)`` float64, ``failed`` ``(n,)``
    (no step: the LP is infeasible or HiGHS failed too; ``r = 0``) and ``by_highs`` ``(n,)`` (the simplex
    handed the LP to HiGHS: not certified, or to confirm that it is infeasible)."""

    step: torch.Tensor
    failed: torch.Tensor
    by_highs: torch.Tensor


def solve_steps(grad: torch.Tensor, rhs: torch.Tensor, rows: torch.Tensor, solver: str = "simplex") -> LPSteps:
    """The L∞-minimal steps ``r`` with ``grad_j^T r <= rhs_j`` for the ``rows`` ``(n, L)`` of each image and
    ``|r| <= 1``; ``grad`` ``(n, L, d)``, ``rhs`` ``(n, L)``.

    ``solver="simplex"``: all images' LPs at once by :func:`simplex_steps`, each answer certified by
    :func:`certified`, the rest by HiGHS one LP at a time. ``solver="highs"``: HiGHS's dual simplex
    (``scipy.optimize.linprog``), one LP per image, in this process. Rows are prepared by :func:`prepare`
    (scaled, redundant ones dropped); an image whose rows all hold at ``r = 0`` gets ``r = 0``.

    Introduced in notebooks/13_successors.ipynb (through :func:`mlnb.attacks.mla_lp`)."""
    G, b, todo, bad = prepare(grad, rhs, rows)
    step = torch.zeros(G.shape[0], G.shape[2], dtype=G.dtype, device=G.device)
    failed, by_highs = bad.clone(), torch.zeros_like(bad)
    idx = todo.nonzero().flatten()
    if solver == "simplex" and idx.numel():
        Gi, bi = (G, b) if idx.numel() == G.shape[0] else (G[idx], b[idx])
        with cpu_threads(SIMPLEX_CPU_THREADS, G.device):
            r, status, y, _ = simplex_steps(Gi, bi)
            ok = (status == 0) & certified(Gi, bi, r, y)
        step[idx[ok]] = r[ok]
        by_highs[idx[~ok]] = True
    elif solver != "simplex":
        by_highs = todo.clone()
    for i in by_highs.nonzero().flatten().tolist():
        r_i = highs_step(G[i].cpu().numpy(), b[i].cpu().numpy())
        if r_i is None:
            failed[i] = True
        else:
            step[i] = torch.from_numpy(r_i).to(step)
    return LPSteps(step, failed, by_highs if solver == "simplex" else torch.zeros_like(bad))


def prepare(grad: torch.Tensor, rhs: torch.Tensor, rows: torch.Tensor):
    """The rows that matter, scaled: ``G`` ``(n, L, d)`` float64 (each kept row divided by its largest entry,
    zero elsewhere), ``b`` ``(n, L)`` (1 on dropped rows, which then always hold), ``todo`` ``(n,)`` (an
    LP is needed: some kept row fails at ``r = 0``) and ``bad`` ``(n,)`` (infeasible: a kept zero row with
    ``b < 0``). A row no step with ``|r| <= 1`` can violate (``b_k >= ||g_k||_1``) is dropped."""
    g, b = grad.double(), rhs.double()
    mag = g.abs()
    scale, l1 = mag.amax(dim=2), mag.sum(dim=2)
    del mag
    keep = rows & (b < l1)
    bad = (keep & (scale == 0)).any(dim=1)
    keep = keep & (scale > 0)
    safe = torch.where(keep, scale, torch.ones_like(scale))
    G = g / safe[:, :, None]
    G.masked_fill_(~keep[:, :, None], 0.0)
    bs = torch.where(keep, b / safe, torch.ones_like(b))
    todo = ~bad & (keep & (bs < 0)).any(dim=1)
    return G, bs, todo, bad


def highs_step(G: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """One image's LP by HiGHS's dual simplex: ``G`` ``(K, d)``, ``b`` ``(K,)`` (rows as from :func:`prepare`;
    rows with ``G_k = 0`` are left out). Returns ``r`` ``(d,)`` or None where the LP is infeasible or
    not solved. Pixels whose column is zero in every row leave the LP (``r_p = 0``)."""
    keep = (G != 0).any(axis=1)
    G, b = G[keep], b[keep]
    live = (G != 0).any(axis=0)
    n_live = int(live.sum())
    M = sp.csr_matrix(np.concatenate([G[:, live], -b[:, None]], axis=1))
    bounds = np.stack([np.r_[np.full(n_live, -1.0), 1.0], np.r_[np.full(n_live, 1.0), S_MAX]], 1)
    res = linprog(np.r_[np.zeros(n_live), -1.0], A_ub=M, b_ub=np.zeros(M.shape[0]), bounds=bounds,
                  method="highs-ds", options={"presolve": False})
    if res.status != 0 or res.x is None:
        return None
    r = np.zeros(G.shape[1])
    r[live] = res.x[:n_live] / res.x[n_live]
    return r


def certified(G: torch.Tensor, b: torch.Tensor, r: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(n,)`` bool: ``r`` ``(n, d)`` satisfies every row and its ``||r||_∞`` is within :data:`GAP_TOL` of
    the weak-duality bound of the multipliers ``λ = max(±y, 0)`` (``y`` ``(n, K)``)."""
    t = r.abs().amax(dim=1)
    lhs = (r[:, None, :] @ G.transpose(1, 2)).squeeze(1)
    feasible = (lhs <= b + FEAS_TOL * torch.maximum(b.abs(), torch.ones_like(b))).all(dim=1)
    bound = torch.zeros_like(t)
    for lam in (y.clamp(min=0), (-y).clamp(min=0)):
        num = -(b * lam).sum(dim=1)
        den = (lam[:, None, :] @ G).squeeze(1).abs().sum(dim=1)
        bound = torch.maximum(bound, torch.where(den > 0, num / den.clamp(min=1e-300), torch.zeros_like(t)))
    return feasible & (t <= 1 + FEAS_TOL) & (t - bound <= GAP_TOL * torch.clamp(t, min=1e-12))


def _basis_matrix(G, b, basis):
    """The ``(n, K, K)`` columns of ``[G, -b, I]`` named by ``basis`` ``(n, K)``."""
    n, K, d = G.shape
    cols = torch.gather(G, 2, basis.clamp(max=d - 1)[:, None, :].expand(n, K, K))
    eye = torch.eye(K, dtype=G.dtype, device=G.device)
    is_s, is_w = basis == d, basis > d
    cols = torch.where(is_s[:, None, :], -b[:, :, None], cols)
    unit = eye[:, (basis - d - 1).clamp(min=0)].permute(1, 0, 2)  # (n, K, K): column j = e_{basis_j - d - 1}
    return torch.where(is_w[:, None, :], unit, cols)


def _pass_sorted(vals, order, gain, rest, m):
    """Along breakpoints already in order (``vals`` ``(n, k)`` ascending, ``order`` their columns): does the
    slope ``rest`` turn, at which position, which column enters, and the ``(n, m)`` mask of those passed."""
    turn = torch.isfinite(vals) & (gain.gather(1, order).cumsum(dim=1) >= rest[:, None])
    pos = turn.to(torch.int8).argmax(dim=1)
    ranks = torch.arange(order.shape[1], device=order.device)[None]
    passed = torch.zeros(order.shape[0], m, dtype=torch.bool, device=order.device)
    passed.scatter_(1, order, ranks < pos[:, None])
    return turn.any(dim=1), pos, order.gather(1, pos[:, None]).squeeze(1), passed


def _bound_flipping(ratio, gain, eligible, delta, ks: tuple[int, ...] = (64, 1024)):
    """The bound-flipping ratio test on ``(n, m)`` rows: pass the breakpoints in increasing ``ratio`` (ties by
    column index, as a stable sort), each lowering the slope ``delta`` ``(n,)`` by its ``gain``, until the
    slope is no longer positive. Returns ``has`` ``(n,)`` (a breakpoint turns it; else the LP is
    infeasible), the entering column ``q`` ``(n,)`` and the ``flip`` mask ``(n, m)`` of the breakpoints
    passed before it. The zero ratios (dual degenerate columns, many at the start) are passed in index
    order by one cumulative sum; the positive ones are searched among the ``k`` smallest for each ``k`` of
    ``ks`` in turn, and a row whose turn is still not decided (or ties with the ``k``-th) takes a full
    stable sort: every stage gives a row the answer of the full sort."""
    n, m = ratio.shape
    zero = eligible & (ratio == 0)
    c0 = torch.where(zero, gain, torch.zeros_like(gain)).cumsum(dim=1)
    turn0 = zero & (c0 >= delta[:, None])
    in_zero = turn0.any(dim=1)
    q0 = turn0.to(torch.int8).argmax(dim=1)
    cols = torch.arange(m, device=ratio.device)[None]
    flip = zero & torch.where(in_zero[:, None], cols < q0[:, None], True)
    rest = delta - c0[:, -1]
    key = torch.where(zero, torch.inf, ratio)
    has, q = in_zero.clone(), q0.clone()
    passed = torch.zeros_like(eligible)
    rows = (~in_zero).nonzero().flatten()
    for k in (*[k for k in ks if k < m], m):
        if rows.numel() == 0:
            break
        kr = key[rows]
        if k < m:
            by_index = kr.topk(k, dim=1, largest=False, sorted=False).indices.sort(dim=1).values
            vals, perm = kr.gather(1, by_index).sort(dim=1, stable=True)
            order = by_index.gather(1, perm)
        else:
            vals, order = kr.sort(dim=1, stable=True)
        h, pos, qk, pk = _pass_sorted(vals, order, gain[rows], rest[rows], m)
        edge = vals[:, -1]
        sure = ~torch.isfinite(edge) | (h & (vals.gather(1, pos[:, None]).squeeze(1) < edge)) | (k == m)
        done = rows[sure]
        has[done], q[done], passed[done] = h[sure], qk[sure], pk[sure]
        rows = rows[~sure]
    return has, q, flip | passed


def simplex_steps(G: torch.Tensor, b: torch.Tensor, max_iter: int | None = None):
    """The bounded dual simplex of the module docstring on ``n`` LPs at once.

    ``G`` ``(n, K, d)`` float64, ``b`` ``(n, K)`` (as from :func:`prepare`; rows with ``G_k = 0`` and
    ``b_k > 0`` always hold). Returns ``r`` ``(n, d)``, ``status`` ``(n,)`` int64 (0 optimal, 1 infeasible,
    2 iteration cap or singular basis), ``y`` ``(n, K)`` (the simplex multipliers, for :func:`certified`)
    and ``pivots`` ``(n,)``. The LPs still pivoting are packed together whenever a quarter of the packed
    ones have finished, so finished LPs cost nothing."""
    n, K, d = G.shape
    dev, dt = G.device, G.dtype
    m = d + 1 + K
    max_iter = max_iter or MAX_PIVOTS_PER_ROW * K + 10
    lo = torch.cat([torch.full((d,), -1.0), torch.tensor([1.0]), torch.zeros(K)]).to(dev, dt)
    hi = torch.cat([torch.ones(d), torch.tensor([S_MAX]), torch.full((K,), torch.inf)]).to(dev, dt)
    span = (hi - lo)[None]
    # start: slacks basic; s at its upper bound (reduced cost -1); u_p at the bound that helps the failing rows
    push = (G * (b < 0)[:, :, None].to(dt)).sum(dim=1)
    val = torch.cat([torch.where(push > 0, -1.0, 1.0).to(dt), torch.full((n, 1), S_MAX, dtype=dt, device=dev),
                     torch.zeros(n, K, dtype=dt, device=dev)], dim=1)
    basis = (d + 1 + torch.arange(K, device=dev)).expand(n, K).clone()
    status = torch.full((n,), 2, dtype=torch.int64, device=dev)
    pivots = torch.zeros(n, dtype=torch.int64, device=dev)
    y_out = torch.zeros(n, K, dtype=dt, device=dev)
    x_out = torch.zeros(n, K, dtype=dt, device=dev)
    idx, Gw, bw, work = torch.arange(n, device=dev), G, b, torch.ones(n, dtype=torch.bool, device=dev)
    Bw, vw = basis.clone(), val.clone()  # the packed working copies, written back when packed and at the end
    for _ in range(max_iter):
        n_work = int(work.sum())
        if n_work == 0:
            break
        if n_work <= 0.75 * idx.numel():  # pack the LPs still pivoting
            val[idx], basis[idx] = vw, Bw
            keep = work.nonzero().flatten()
            idx, Gw, bw, work, Bw, vw = idx[keep], Gw[keep], bw[keep], work[keep], Bw[keep], vw[keep]
        nb = torch.ones_like(vw, dtype=torch.bool).scatter_(1, Bw, False)
        Binv, info = torch.linalg.inv_ex(_basis_matrix(Gw, bw, Bw))
        xN = torch.where(nb, vw, torch.zeros_like(vw))
        Gu = (xN[:, None, :d] @ Gw.transpose(1, 2)).squeeze(1)  # G u (n, K); this form is the fast product
        x_B = -(Binv @ (Gu - bw * xN[:, d:d + 1])[:, :, None]).squeeze(2)
        l_B, h_B = lo[Bw], hi[Bw]
        tol = FEAS_TOL * torch.clamp(x_B.abs(), min=1.0)
        infeas = torch.maximum(l_B - x_B, x_B - h_B).sub(tol).clamp(min=0)
        c_B = (Bw == d).to(dt).neg()
        y = (Binv.transpose(1, 2) @ c_B[:, :, None]).squeeze(2)
        optimal = work & (infeas == 0).all(dim=1) & (info == 0)
        stop = work & (optimal | (info != 0))
        status[idx[optimal]] = 0
        y_out[idx[stop]], x_out[idx[stop]] = y[stop], x_B[stop]
        work = work & ~stop
        # dual ratio test along the row of the most infeasible basic variable (dual steepest edge)
        r = (infeas.square() / Binv.square().sum(dim=2)).argmax(dim=1)
        rho = Binv.gather(1, r[:, None, None].expand(-1, 1, K)).squeeze(1)
        both = torch.stack([rho, y], dim=1) @ Gw  # (n, 2, d)
        alpha = torch.cat([both[:, 0], -(rho * bw).sum(1, keepdim=True), rho], dim=1)
        dj = torch.cat([-both[:, 1], -1.0 + (y * bw).sum(1, keepdim=True), -y], dim=1)
        x_r, l_r = x_B.gather(1, r[:, None]).squeeze(1), l_B.gather(1, r[:, None]).squeeze(1)
        up = x_r < l_r  # the leaving variable rises to its lower bound (else falls to its upper one)
        # a nonbasic column moves up from its lower bound (+1) or down from its upper one (-1); it is a
        # breakpoint when that move pushes the leaving variable towards its bound
        dirn = torch.where(nb, torch.where(vw <= lo[None], 1.0, -1.0), 0.0).to(dt)
        a = alpha.mul_(torch.where(up, 1.0, -1.0).to(dt)[:, None]).mul_(dirn).neg_()
        eligible = a > PIVOT_TOL
        ratio = torch.where(eligible, dj.mul_(dirn).clamp_(min=0).div_(a), torch.inf)
        gain = torch.where(eligible, a.mul_(span), 0.0)
        delta = torch.where(up, l_r - x_r, x_r - h_B.gather(1, r[:, None]).squeeze(1))
        has, q, flip = _bound_flipping(ratio, gain, eligible, delta)
        status[idx[work & ~has]] = 1  # the dual is unbounded along this row: no step with |r| <= 1
        work = work & has
        rows = work.nonzero().flatten()
        vw = torch.where(flip & work[:, None], (lo + hi)[None] - vw, vw)  # to the other bound
        q, leave = q[rows], Bw.gather(1, r[:, None]).squeeze(1)[rows]
        vw[rows, leave] = torch.where(up[rows], lo[leave], hi[leave])
        Bw[rows, r[rows]] = q
        pivots[idx[rows]] += 1
    val[idx], basis[idx] = vw, Bw
    # the optimum: u from the bounds and the basic values; r = u / s
    full = val.scatter(1, basis, x_out)
    s = full[:, d].clamp(min=1.0)
    step = full[:, :d] / s[:, None]
    step = torch.where((G != 0).any(dim=1), step, torch.zeros_like(step))
    return step, status, y_out, pivots
