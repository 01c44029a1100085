"""The optimisation driver shared by ML-CW, Rank I and Rank II, written once.

It owns Carlini-Wagner's change of variables, per-image Adam, the per-image binary search on λ,
best-so-far bookkeeping, per-image early abort and active-batch shrinking; an attack contributes
only a per-image loss ``hinge(logits, state) -> (hinge (n,) float64, goal_reached (n,) bool,
progress (n,) float64, vjp)`` and two selection rules (within one λ run, and across λ).

Exact bookkeeping (no decision is lost to float32 rounding): the hinge comes in float64 from the
exact probability kernels (:mod:`mlnb.probability`), the distortion is summed in float64, and the
loss ``||r||^2 + λ h`` is formed in float64 (in float32 a change of distortion vanishes beside
``λ h`` at λ = 1e7). A run is aborted early only when *neither* the loss *nor* the logit-space
``progress`` measure has fallen by a relative :data:`ABORT_REL` over a window: a saturated label
whose logit still falls (30 -> 25 moves the probability hinge by 1e-11) keeps its run alive.

Every image runs its own schedule: ``n_search`` runs of at most ``max_iter`` Adam steps, each run
restarted from the clean image with its own λ. Images are never synchronised with each other
(an image whose run stops early starts its next λ at once), so an image's trajectory depends only
on itself: attacking it alone or in a batch gives the same result. Images whose ``n_search`` runs
are over leave the active batch (``shrink=True``): on CPU at once, on an accelerator at the next
check (every ``check_every`` steps, the only host synchronisation there).

Cost of a step outside the model: the distortion's gradient and the change of variables are applied
by hand (no autograd graph for them); a loss may hand its gradient w.r.t. the logits (``vjp``, written
out formula by formula as autograd takes it) so that autograd runs only the model's backward; the
per-image state and the scratch the image-sized passes write into are views of one allocation made once
per call (fresh or scattered image-sized tensors make glibc's heap grow, trim and fault its pages in
again every few steps, inside the model's own passes); Adam is updated in place with ``addcdiv``
and restarts through a per-row decay factor (0 on a run's first step) instead of masked fills;
Kendall's tau reads the criterion's pair signs made once per target; and on CPU (where a host decision
is free) the image-sized best-so-far copies and the end-of-run bookkeeping run only on the steps and
rows that need them. The arithmetic is the one of the plain formulation: results are bit-identical to it.

The state reads like the algorithm (:class:`SearchState`): per image the Adam variables ``w, m, v``, the
step within the current λ run, the λ run and the bounds of the binary search, the best iterate of the
current run and the best example so far (:class:`Iterate`), and the target's rows (:class:`mlnb.target.Target`).
Adam is written out rather than taken from ``torch.optim.Adam``: every image restarts its moments at its
own step (a run's first step decays them by 0) and has its own bias correction, which ``torch.optim``
keeps per parameter tensor, not per image; a per-image optimizer per row would cost a Python loop.

``trace=True`` records, every step, for every active image, the loss, its two parts, λ, the λ run and the
constraints met (:data:`TRACE_FIELDS`); it costs a host copy per step.

Private to :mod:`mlnb.attacks`. Introduced in notebooks/03_ml_cw.ipynb.
"""
from __future__ import annotations

from typing import Callable

import torch

from .. import validate as V
from ..metrics import tau_b_parts
from ..target import Target
from ._core import AttackResult, Runtime, finalize, progress_bar, run_in_chunks, select_rows
from ._state import (Iterate, SearchState, _tau, better, collect_trace, from_w,  # noqa: F401 (from_w: public here)
                     state_block, step_constants, to_w, trace_row)

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
ABORT_REL = 1e-4  # early abort: loss and progress both not below (1 - 1e-4) x their values a window earlier
SELECT_CHOICES = ("constraints", "tau", "constraints_tau")
SHRINK = True  # default of optimize(shrink=None): finished images leave the active batch (benchmarks turn it off)
HOST_DECISIONS: bool | None = None  # None: on CPU only; False forces the branch-free accelerator path


def _col(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *([1] * (like.dim() - 1)))


def _set_rows(dst: torch.Tensor, mask: torch.Tensor, src: torch.Tensor, host: bool) -> torch.Tensor:
    """``dst`` with the rows of ``mask`` taken from ``src``: only those rows are copied on CPU (the
    caller knows that ``mask`` is not empty; all of them in one pass when every row is taken), a
    branch-free ``where`` elsewhere."""
    if host:
        if bool(mask.all()):
            return dst.copy_(src)
        rows = mask.nonzero().flatten()
        return dst.index_copy_(0, rows, src.index_select(0, rows))
    return torch.where(_col(mask, dst), src, dst)


def _adopt(dst: Iterate, mask: torch.Tensor, src: Iterate, host: bool) -> Iterate:
    """``dst`` with the rows of ``mask`` taken from ``src`` (the example and its keys)."""
    return Iterate(_set_rows(dst.x, mask, src.x, host), torch.where(mask, src.n_met, dst.n_met),
                   torch.where(mask, src.tau, dst.tau), torch.where(mask, src.dist, dst.dist))


def _count_met(logits: torch.Tensor, S: SearchState) -> torch.Tensor:
    """Default selection count: constraints of Eq. (4) met, ``(n,)``."""
    return S.target.n_satisfied(logits)


def optimize(rt: Runtime, x: torch.Tensor, target: Target, hinge: Callable, *, lambda_init: float,
             n_search: int, max_iter: int, lr: float, run_select: str, final_select: str,
             tanh_eps: float, check_every: int, bar, early_abort: bool = True, shrink: bool | None = None,
             count: Callable | None = None, extra: dict | None = None, trace: list | None = None) -> dict:
    """Minimise ``||r||_2^2 + λ hinge(x + r)`` per image with a binary search on λ.

    ``x`` ``(n, C, H, W)``; ``target`` their :class:`~mlnb.target.Target`; ``extra``: per-image tensors
    (first axis ``n``) the loss reads as ``state.extra``. ``hinge(logits, state)`` returns the hinge,
    whether the run's goal is reached (``None``: every constraint that ``count`` counts holds) and the
    progress measure (or a function of no arguments that computes it: it is read only at early-abort
    checks), each ``(n,)``, and ``vjp``: ``None`` (the hinge carries its autograd graph) or
    ``vjp(lam) -> (n, L)``, the gradient of ``sum lam * hinge`` w.r.t. ``logits``. Returns ``x_adv``,
    ``iterations``, ``param`` (λ of the returned example, NaN for the clean image), ``n_runs_ok``.
    ``early_abort=False`` runs every λ run to ``max_iter``; ``shrink=False`` keeps finished images in
    the batch until the whole batch is done (a fixed budget: same per-image results, more work);
    ``None`` takes the module default :data:`SHRINK`. ``count(logits, state) -> (n,)`` is the number of
    constraints an iterate meets for selection and for the start state (default: Eq. 4 at the 0.5
    threshold; ML-CW with a margin κ counts a constraint only when it holds by κ). ``trace``: a list
    that receives one dict of :data:`TRACE_FIELDS` (``(n_active,)`` CPU tensors) per step.
    """
    count = _count_met if count is None else count
    shrink = SHRINK if shrink is None else shrink
    n, dev = x.shape[0], x.device
    # host decisions cost nothing on CPU; elsewhere sync only at checks
    host = dev.type == "cpu" if HOST_DECISIONS is None else HOST_DECISIONS
    need_tau = "tau" in run_select or "tau" in final_select
    zeros = torch.zeros(n, device=dev, dtype=torch.float64)
    i64 = torch.zeros(n, dtype=torch.int64, device=dev)
    # the image-sized state in one allocation: w0, w, m, v, the two best iterates, the scratch of the
    # image-sized passes (tanh(w) then Adam's m-hat, the iterate, its perturbation then Adam's denominator)
    w0 = to_w(x, tanh_eps)
    (w0, w, m, v, best_x, run_best_x, *scratch), squares = state_block(x, (w0, w0, 0, 0, x, x), 3)
    S = SearchState(rows=torch.arange(n, device=dev), target=target, x0=x, w0=w0, w=w,
                    m=m, v=v, step=i64.clone(), run=i64.clone(),
                    lam=torch.full((n,), float(lambda_init), device=dev, dtype=torch.float64), lower=zeros.clone(),
                    upper=torch.full_like(zeros, torch.inf), prev_loss=torch.full_like(zeros, torch.inf),
                    prev_progress=torch.full_like(zeros, torch.inf), iterations=i64.clone(),
                    run_ok=torch.zeros(n, dtype=torch.bool, device=dev), n_runs_ok=i64.clone(),
                    run_best=None, best=None, best_lam=torch.full_like(zeros, torch.nan), extra=dict(extra or {}))
    with torch.no_grad():
        logits0 = rt.logits(x)
    n_met0 = count(logits0, S)
    S.tau_parts = tau_b_parts(target.y_tau, logits0.dtype) if need_tau else None  # made once, rows follow
    tau0 = _tau(logits0, S.tau_parts) if need_tau else logits0.new_zeros(n)  # no rule reads it otherwise
    S.best = Iterate(best_x, n_met0, tau0, zeros.clone())
    S.run_best = Iterate(run_best_x, torch.full_like(n_met0, -1), torch.full_like(tau0, -torch.inf),
                         torch.full_like(zeros, torch.inf))
    out = {"x_adv": x.clone(), "iterations": i64.clone(), "param": torch.full((n,), torch.nan, device=dev),
           "n_runs_ok": i64.clone()}
    # images already in the target state are returned unchanged, at zero cost
    S = _flush(S, out, n_met0 == target.n_constraints)
    b1, b2 = ADAM_BETAS
    adam_table, is_check = step_constants(max_iter, ADAM_BETAS, max(1, max_iter // 10), x)
    half = torch.tensor(0.5, device=dev)
    abort_factor = 1 - ABORT_REL
    views = None  # of the scratch: the active rows are a prefix of it
    done_steps = 0
    for step in range(n_search * max_iter):
        n_act = int(S.rows.numel())
        if n_act == 0:
            break
        live = S.run < n_search
        k0 = S.step
        if views is None or views[0].shape[0] != n_act:
            views = tuple(b[:n_act] for b in (*scratch, squares))
        t, xa, d, sq = views
        with torch.no_grad():
            torch.tanh(S.w, out=t)
            torch.add(half, t, alpha=0.5, out=xa)  # (t + 1) / 2 in one pass, bit for bit (halving is exact)
        xa.requires_grad_(True)
        logits = rt.logits(xa)
        h, goal, prog, vjp = hinge(logits, S)  # goal None: every constraint counted (count == n_constraints)
        # the gradient of sum λ h w.r.t. xa: through h's graph, or from the loss's own backward (vjp)
        (g,) = torch.autograd.grad(*(((S.lam * h).sum(), xa) if vjp is None else (logits, xa, vjp(S.lam))))
        if not (g.is_contiguous() or g.is_contiguous(memory_format=torch.channels_last)):
            g = g.contiguous()  # e.g. expanded by a model that sums or averages its input first: written in place below
        with torch.no_grad():
            torch.sub(xa, S.x0, out=d)
            dist = sq.copy_(d.view(sq.shape)).pow_(2).sum(1)
            # gradient w.r.t. w of ||xa - x0||^2 + λ h: (g + 2d) / 2 * (1 - t^2); the exact factor 1/2 is
            # carried by Adam's state instead (m and v hold 2x and 4x their values, eps is doubled)
            torch.ops.aten.tanh_backward.grad_input(g.add_(d, alpha=2), t, grad_input=g)
            new = Iterate(xa, count(logits, S), _tau(logits, S.tau_parts) if need_tau else S.run_best.tau, dist)
            if goal is None:
                goal = new.n_met == S.target.n_constraints
            if trace is not None:
                trace.append(trace_row(S, live, dist + S.lam * h, dist, h, new.n_met))
            # best iterate of the current λ run
            imp = live & better(run_select, new, S.run_best)
            if not host or bool(imp.any()):
                S.run_best = _adopt(S.run_best, imp, new, host)
            S.run_ok |= live & goal
            # per-image Adam step, in place (rows that finished may keep moving: nothing of theirs is read);
            # m-hat and the denominator reuse the scratch of t and d
            m, v = S.m, S.v
            decay1, decay2, corr1, corr2 = adam_table[k0].unbind(1)
            m.mul_(decay1).add_(g, alpha=1 - b1)
            v.mul_(decay2).addcmul_(g, g, value=1 - b2)
            del g  # freed before the next step's model call, which then finds the same free memory
            den = torch.div(v, corr2, out=d).sqrt_().add_(2 * ADAM_EPS)
            S.w.addcdiv_(torch.div(m, corr1, out=t), den, value=-lr)
            S.step = k0 + live
            S.iterations += live
            end = live & (S.step >= max_iter)
            check = live & is_check[k0] if early_abort else None
            if check is not None and (not host or bool(check.any())):  # on CPU, steps without a check skip it
                prog = (prog() if callable(prog) else prog).detach()
                # abort only a run that has reached its goal, meets every constraint of Eq. (4) now, and
                # has stalled in both the loss and the logit-space progress (no success is given up)
                settled = S.run_ok & (new.n_met == S.target.n_constraints)
                loss = dist + S.lam * h
                abort = (check & settled & (loss > S.prev_loss * abort_factor)
                         & (prog >= S.prev_progress * abort_factor))
                S.prev_loss = torch.where(check, loss, S.prev_loss)
                S.prev_progress = torch.where(check, prog, S.prev_progress)
                end = end | abort  # abort holds only on checked, hence live, rows
            ended = not host or bool(end.any())
            if ended:
                _end_of_run(S, end, final_select, host)
        done_steps += n_act
        last = step + 1 == n_search * max_iter
        at_check = (step + 1) % check_every == 0 or last
        if at_check:
            bar.update(done_steps)
            done_steps = 0
        if (ended if host else at_check) or last:
            finished = S.run >= n_search
            if shrink or bool(finished.all()):
                S = _flush(S, out, finished)
    bar.update(done_steps)
    if S.rows.numel():  # the budget is spent (never reached: every run ends at max_iter)
        S = _flush(S, out, torch.ones_like(S.run_ok))
    return out


def _end_of_run(S: SearchState, end: torch.Tensor, final_select: str, host: bool) -> None:
    """Commit the run's best iterate, move λ (binary search), restart ended rows from the clean image."""
    gimp = end & better(final_select, S.run_best, S.best)
    if not host or bool(gimp.any()):
        S.best = _adopt(S.best, gimp, S.run_best, host)
        S.best_lam = torch.where(gimp, S.lam, S.best_lam)
    # binary search: success -> upper bound, bisect (halve while no lower bound is known);
    # failure -> lower bound, x10 while no upper bound is known, else bisect (Carlini & Wagner)
    ok = S.run_ok
    S.upper = torch.where(end & ok, torch.minimum(S.upper, S.lam), S.upper)
    S.lower = torch.where(end & ~ok, torch.maximum(S.lower, S.lam), S.lower)
    new_lam = torch.where(torch.isfinite(S.upper), (S.lower + S.upper) / 2, S.lam * 10)
    S.lam = torch.where(end, new_lam, S.lam)
    S.n_runs_ok = S.n_runs_ok + (end & ok)
    S.run = S.run + end
    # restart: w from the clean image; Adam's m and v are zeroed by the decay factor of step k = 0
    S.w = _set_rows(S.w, end, S.w0, host)
    S.step = torch.where(end, 0, S.step)
    S.prev_loss = torch.where(end, torch.inf, S.prev_loss)
    S.prev_progress = torch.where(end, torch.inf, S.prev_progress)
    S.run_ok = S.run_ok & ~end
    rb = S.run_best
    S.run_best = Iterate(rb.x, torch.where(end, -1, rb.n_met), torch.where(end, -torch.inf, rb.tau),
                         torch.where(end, torch.inf, rb.dist))


def _flush(S: SearchState, out: dict, finished: torch.Tensor) -> SearchState:
    """Active-batch shrinking: write the results of the ``finished`` rows to ``out``, drop those rows."""
    if not bool(finished.any()):
        return S
    at = S.rows[finished]
    for key, value in (("x_adv", S.best.x), ("iterations", S.iterations), ("param", S.best_lam),
                       ("n_runs_ok", S.n_runs_ok)):
        out[key][at] = value[finished].to(out[key].dtype)
    return select_rows(S, (~finished).nonzero().flatten())


def check_search(lambda_init, n_search, max_iter, lr, tanh_eps, check_every) -> None:
    V.check_positive("lambda_init", lambda_init)
    V.check_int("n_search", n_search)
    V.check_int("max_iter", max_iter)
    V.check_positive("lr", lr)
    V.check_positive("tanh_eps", tanh_eps)
    if tanh_eps >= 0.5:
        raise ValueError(f"tanh_eps must be below 0.5, got {tanh_eps}: pass e.g. tanh_eps=1e-6")
    V.check_int("check_every", check_every)


def run_search(name, rt, x, goal, hinge, progress, run_select, final_select, *, lambda_init, n_search, max_iter,
               lr, tanh_eps, check_every, batch_size, early_abort, trace, count=None, extra=None) -> AttackResult:
    """The public side of :func:`optimize`: chunks, the progress bar, the trace and the final evaluation."""
    check_search(lambda_init, n_search, max_iter, lr, tanh_eps, check_every)
    if not isinstance(early_abort, bool) or not isinstance(trace, bool):
        raise TypeError(f"early_abort and trace must be bools, got {early_abort!r} and {trace!r}")
    extra = extra or {}
    steps = [] if trace else None
    bar = progress_bar(x.shape[0] * n_search * max_iter, progress, name)
    with bar:
        def chunk(sl):
            rows = None if steps is None else []
            r = optimize(rt, x[sl], goal[sl], hinge, lambda_init=lambda_init, n_search=n_search, max_iter=max_iter,
                         lr=lr, run_select=run_select, final_select=final_select, tanh_eps=tanh_eps,
                         check_every=check_every, bar=bar, early_abort=early_abort, count=count,
                         extra={k: v[sl] for k, v in extra.items()}, trace=rows)
            if steps is not None:  # a chunk retried after running out of memory records only its finished try
                steps.extend({**row, "image": row["image"] + sl.start} for row in rows)
            return r
        r = run_in_chunks(x.shape[0], batch_size, x.device, chunk)
        bar.update(bar.total - bar.n)
    extras = {"n_runs_ok": r["n_runs_ok"]}
    if trace:
        extras["trace"] = collect_trace(steps)
    return finalize(rt, x, r["x_adv"], goal, r["iterations"], r["param"], extras)
