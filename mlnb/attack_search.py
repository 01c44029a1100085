"""The optimisation driver shared by ML-CW, Rank I and Rank II, written once.

It owns Carlini-Wagner's change of variables, per-image Adam, the per-image binary search on λ,
best-so-far bookkeeping, per-image early abort and active-batch shrinking; an attack contributes
only a per-image loss ``hinge(logits, state) -> (hinge (n,) float64, goal_reached (n,) bool,
progress (n,) float64)`` and two selection rules (within one λ run, and across λ).

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
by hand (no autograd graph for them), Adam is updated in place with ``addcdiv`` and restarts
through a per-row decay factor (0 on a run's first step) instead of masked fills, and on CPU (where a
host decision is free) the image-sized best-so-far copies and the end-of-run bookkeeping run only
on the steps and rows that need them. The arithmetic is the one of the plain formulation, so
results are bit-identical to it.

Introduced in notebooks/03_ml_cw.ipynb.
"""
from __future__ import annotations

from typing import Callable

import torch

from .attack_core import Runtime, flush_finished
from .attack_losses import kendall_tau_b, n_met

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
ABORT_REL = 1e-4  # early abort: loss and progress both not below (1 - 1e-4) x their values a window earlier
SELECT_CHOICES = ("constraints", "tau", "constraints_tau")
SHRINK = True  # default of optimize(shrink=None): finished images leave the active batch
EARLY_ABORT = True  # default of optimize(early_abort=None)
HOST_DECISIONS: bool | None = None  # None: on CPU only; False forces the branch-free accelerator path
_KEYS = {"constraints": ("nsat",), "tau": ("tau",), "constraints_tau": ("nsat", "tau")}


def to_w(x: torch.Tensor, tanh_eps: float) -> torch.Tensor:
    """CW change of variables: ``w = atanh((2x - 1)(1 - tanh_eps))`` so that pixels at exactly 0 or 1
    map to a finite ``w``; the inverse is :func:`from_w`."""
    return torch.atanh((2 * x - 1) * (1 - tanh_eps))


def from_w(w: torch.Tensor) -> torch.Tensor:
    """``x = (tanh(w) + 1) / 2``, always in ``[0, 1]``."""
    return (torch.tanh(w) + 1) / 2


def _tau(logits: torch.Tensor, ytau: torch.Tensor) -> torch.Tensor:
    """Kendall tau-b as a selection key: an undefined tau (NaN) ranks below every defined one."""
    return torch.nan_to_num(kendall_tau_b(logits, ytau), nan=-2.0)


def better(rule: str, new: dict, old: dict) -> torch.Tensor:
    """``(n,)`` bool: ``new`` strictly better than ``old`` under ``rule`` (larger is better):
    ``constraints`` = (n_satisfied, -distortion), ``tau`` = (tau_b, -distortion),
    ``constraints_tau`` = (n_satisfied, tau_b, -distortion), compared lexicographically."""
    out = new["dist"] < old["dist"]
    for key in reversed(_KEYS[rule]):
        out = (new[key] > old[key]) | ((new[key] == old[key]) & out)
    return out


def _col(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *([1] * (like.dim() - 1)))


def _set_rows(dst: torch.Tensor, mask: torch.Tensor, src: torch.Tensor, host: bool) -> torch.Tensor:
    """``dst`` with the rows of ``mask`` taken from ``src``: only those rows are copied on CPU (the
    caller knows that ``mask`` is not empty), a branch-free ``where`` elsewhere."""
    if host:
        rows = mask.nonzero().flatten()
        return dst.index_copy_(0, rows, src.index_select(0, rows))
    return torch.where(_col(mask, dst), src, dst)


def _count_met(logits: torch.Tensor, S: dict) -> torch.Tensor:
    """Default selection count: constraints of Eq. (4) met, ``(n,)``."""
    return n_met(logits, S["target"], S["ab"])


def optimize(rt: Runtime, x: torch.Tensor, aux: dict, hinge: Callable, *, lambda_init: float,
             n_search: int, max_iter: int, lr: float, run_select: str, final_select: str,
             tanh_eps: float, check_every: int, bar, early_abort: bool | None = None, shrink: bool | None = None,
             count: Callable | None = None) -> dict:
    """Minimise ``||r||_2^2 + λ hinge(x + r)`` per image with a binary search on λ.

    ``x`` ``(n, C, H, W)``; ``aux``: per-image tensors (first axis ``n``) passed to ``hinge``, which must
    include ``target`` (``y*``), ``ab`` (``A | B``) and ``ytau`` ``(n, L)``. Returns ``x_adv``,
    ``iterations``, ``param`` (λ of the returned example, NaN for the clean image), ``n_runs_ok``.
    ``early_abort=False`` runs every λ run to ``max_iter``; ``shrink=False`` keeps finished images in
    the batch until the whole batch is done (a fixed budget: same per-image results, more work);
    ``None`` takes the module defaults :data:`EARLY_ABORT` and :data:`SHRINK`. ``count(logits, state)
    -> (n,)`` is the number of constraints an iterate meets for selection and for the start state (default:
    Eq. 4 at the 0.5 threshold; ML-CW with a margin κ counts a constraint only when it holds by κ).
    """
    count = _count_met if count is None else count
    early_abort = EARLY_ABORT if early_abort is None else early_abort
    shrink = SHRINK if shrink is None else shrink
    n, dev = x.shape[0], x.device
    # host decisions cost nothing on CPU; elsewhere sync only at checks
    host = dev.type == "cpu" if HOST_DECISIONS is None else HOST_DECISIONS
    need_tau = "tau" in run_select or "tau" in final_select
    with torch.no_grad():
        logits0 = rt.logits(x)
    nsat0 = count(logits0, aux)
    tau0 = _tau(logits0, aux["ytau"])
    zeros = torch.zeros(n, device=dev, dtype=torch.float64)
    i64 = torch.zeros(n, dtype=torch.int64, device=dev)
    out = {"x_adv": x.clone(), "iterations": i64.clone(), "param": torch.full((n,), torch.nan, device=dev),
           "n_runs_ok": i64.clone()}
    w0 = to_w(x, tanh_eps)
    lam = torch.full((n,), float(lambda_init), device=dev, dtype=torch.float64)
    S = {"x0": x, "w0": w0, "w": w0.clone(), "m": torch.zeros_like(x), "v": torch.zeros_like(x),
         "k": i64.clone(), "s": i64.clone(), "lam": lam, "lo": zeros.clone(),
         "hi": torch.full_like(zeros, torch.inf), "prev": torch.full_like(zeros, torch.inf),
         "prev_prog": torch.full_like(zeros, torch.inf), "iters": i64.clone(),
         "ok": torch.zeros(n, dtype=torch.bool, device=dev), "nok": i64.clone(),
         "rb_x": x.clone(), "rb_nsat": torch.full_like(nsat0, -1), "rb_tau": torch.full_like(tau0, -torch.inf),
         "rb_dist": torch.full_like(zeros, torch.inf),
         "b_x": x.clone(), "b_nsat": nsat0, "b_tau": tau0, "b_dist": zeros.clone(), "b_lam": torch.full_like(zeros, torch.nan),
         "idx": torch.arange(n, device=dev), **aux}
    # images already in the target state are returned unchanged, at zero cost
    S = _flush(S, out, nsat0 == aux["ab"].sum(1))
    window = max(1, max_iter // 10)
    b1, b2 = ADAM_BETAS
    # per-step constants indexed by k (steps already taken in the current λ run): Adam's bias
    # corrections for step k + 1, its decay factors (0 on a run's first step: m = v = 0 at a restart)
    # and whether step k + 1 is an early-abort check
    ks = torch.arange(max_iter + 1, device=dev)
    bc1 = (1 - b1 ** (ks + 1).double()).float()
    bc2 = (1 - b2 ** (ks + 1).double()).float()
    dec1 = torch.where(ks == 0, 0.0, torch.tensor(b1, dtype=torch.float32, device=dev))
    dec2 = torch.where(ks == 0, 0.0, torch.tensor(b2, dtype=torch.float32, device=dev))
    is_check = (ks + 1) % window == 0
    abort_factor = 1 - ABORT_REL if early_abort else torch.inf  # loss > prev * inf never holds
    done_steps = 0
    for step in range(n_search * max_iter):
        n_act = int(S["idx"].numel())
        if n_act == 0:
            break
        live = S["s"] < n_search
        k0 = S["k"]
        with torch.no_grad():
            t = torch.tanh(S["w"])
            xa = (t + 1).div_(2)
        xa.requires_grad_(True)
        logits = rt.logits(xa)
        h, goal, prog = hinge(logits, S)
        (g,) = torch.autograd.grad((S["lam"] * h).sum(), xa)
        with torch.no_grad():
            xa, h = xa.detach(), h.detach()
            d = xa - S["x0"]
            dist = d.flatten(1).double().pow(2).sum(1)
            loss = dist + S["lam"] * h
            # gradient w.r.t. w of ||xa - x0||^2 + λ h: (g + 2d) / 2 * (1 - t^2); the exact factor 1/2 is
            # carried by Adam's state instead (m and v hold 2x and 4x their values, eps is doubled)
            g = torch.ops.aten.tanh_backward(g.add_(d, alpha=2), t)
            new = {"nsat": count(logits.detach(), S), "dist": dist,
                   "tau": _tau(logits.detach(), S["ytau"]) if need_tau else S["rb_tau"]}
            # best iterate of the current λ run
            imp = live & better(run_select, new, {"nsat": S["rb_nsat"], "tau": S["rb_tau"], "dist": S["rb_dist"]})
            if not host or bool(imp.any()):
                S["rb_x"] = _set_rows(S["rb_x"], imp, xa, host)
                for key in ("nsat", "tau", "dist"):
                    S["rb_" + key] = torch.where(imp, new[key], S["rb_" + key])
            S["ok"] |= live & goal
            # per-image Adam step, in place (rows that finished may keep moving: nothing of theirs is read)
            m, v = S["m"], S["v"]
            m.mul_(_col(dec1[k0], m)).add_(g, alpha=1 - b1)
            v.mul_(_col(dec2[k0], v)).addcmul_(g, g, value=1 - b2)
            den = (v / _col(bc2[k0], v)).sqrt_().add_(2 * ADAM_EPS)
            S["w"].addcdiv_(m / _col(bc1[k0], m), den, value=-lr)
            S["k"] = k0 + live
            S["iters"] += live
            check = live & is_check[k0]
            prog = prog.detach()
            # abort only a run that has reached its goal, meets every constraint of Eq. (4) now, and
            # has stalled in both the loss and the logit-space progress (no success is given up)
            settled = S["ok"] & (new["nsat"] == S["ab"].sum(1))
            abort = check & settled & (loss > S["prev"] * abort_factor) & (prog >= S["prev_prog"] * abort_factor)
            S["prev"] = torch.where(check, loss, S["prev"])
            S["prev_prog"] = torch.where(check, prog, S["prev_prog"])
            end = live & ((S["k"] >= max_iter) | abort)
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
            finished = S["s"] >= n_search
            if shrink or bool(finished.all()):
                S = _flush(S, out, finished)
    bar.update(done_steps)
    if S["idx"].numel():  # the budget is spent (never reached: every run ends at max_iter)
        S = _flush(S, out, torch.ones_like(S["ok"]))
    return out


def _end_of_run(S: dict, end: torch.Tensor, final_select: str, host: bool) -> None:
    """Commit the run's best iterate, move λ (binary search), restart ended rows from the clean image."""
    gimp = end & better(final_select, {"nsat": S["rb_nsat"], "tau": S["rb_tau"], "dist": S["rb_dist"]},
                        {"nsat": S["b_nsat"], "tau": S["b_tau"], "dist": S["b_dist"]})
    if not host or bool(gimp.any()):
        S["b_x"] = _set_rows(S["b_x"], gimp, S["rb_x"], host)
        for key in ("nsat", "tau", "dist"):
            S["b_" + key] = torch.where(gimp, S["rb_" + key], S["b_" + key])
        S["b_lam"] = torch.where(gimp, S["lam"], S["b_lam"])
    # binary search: success -> upper bound, bisect (halve while no lower bound is known);
    # failure -> lower bound, x10 while no upper bound is known, else bisect (Carlini & Wagner)
    ok = S["ok"]
    S["hi"] = torch.where(end & ok, torch.minimum(S["hi"], S["lam"]), S["hi"])
    S["lo"] = torch.where(end & ~ok, torch.maximum(S["lo"], S["lam"]), S["lo"])
    new_lam = torch.where(torch.isfinite(S["hi"]), (S["lo"] + S["hi"]) / 2, S["lam"] * 10)
    S["lam"] = torch.where(end, new_lam, S["lam"])
    S["nok"] = S["nok"] + (end & ok)
    S["s"] = S["s"] + end
    # restart: w from the clean image; Adam's m and v are zeroed by the decay factor of step k = 0
    S["w"] = _set_rows(S["w"], end, S["w0"], host)
    S["k"] = torch.where(end, 0, S["k"])
    S["prev"] = torch.where(end, torch.inf, S["prev"])
    S["prev_prog"] = torch.where(end, torch.inf, S["prev_prog"])
    S["ok"] = S["ok"] & ~end
    S["rb_nsat"] = torch.where(end, -1, S["rb_nsat"])
    S["rb_tau"] = torch.where(end, -torch.inf, S["rb_tau"])
    S["rb_dist"] = torch.where(end, torch.inf, S["rb_dist"])


def _flush(S: dict, out: dict, finished: torch.Tensor) -> dict:
    return flush_finished(S, out, finished, {"x_adv": "b_x", "iterations": "iters", "param": "b_lam", "n_runs_ok": "nok"})
