"""The optimisation driver shared by ML-CW, Rank I and Rank II, written once.

It owns Carlini-Wagner's change of variables, per-image Adam, the per-image binary search on λ,
best-so-far bookkeeping, per-image early abort and active-batch shrinking; an attack contributes
only a per-image loss ``hinge(logits, probs, aux) -> (hinge (n,), goal_reached (n,) bool)`` and two
selection rules (within one λ run, and across λ).

Every image runs its own schedule: ``n_search`` runs of at most ``max_iter`` Adam steps, each run
restarted from the clean image with its own λ. Images are never synchronised with each other
(an image whose run stops early starts its next λ at once), so an image's trajectory depends only
on itself: attacking it alone or in a batch gives the same result. Finished images leave the
active batch at the next check (every ``check_every`` steps, the only host synchronisation).

Introduced in notebooks/03_ml_cw.ipynb.
"""
from __future__ import annotations

from typing import Callable

import torch

from .attack_core import Runtime
from .attack_losses import kendall_tau_b, n_satisfied

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
ABORT_REL = 1e-4  # early abort: loss not below (1 - 1e-4) x its value a window earlier (as CW)
SELECT_CHOICES = ("constraints", "tau", "constraints_tau")


def to_w(x: torch.Tensor, tanh_eps: float) -> torch.Tensor:
    """CW change of variables: ``w = atanh((2x - 1)(1 - tanh_eps))`` so that pixels at exactly 0 or 1
    map to a finite ``w``; the inverse is :func:`from_w`."""
    return torch.atanh((2 * x - 1) * (1 - tanh_eps))


def from_w(w: torch.Tensor) -> torch.Tensor:
    """``x = (tanh(w) + 1) / 2``, always in ``[0, 1]``."""
    return (torch.tanh(w) + 1) / 2


def selection_key(rule: str, nsat: torch.Tensor, tau: torch.Tensor, dist: torch.Tensor) -> list:
    """Lexicographic key, larger is better: ``constraints`` = (n_satisfied, -distortion),
    ``tau`` = (tau_b, -distortion), ``constraints_tau`` = (n_satisfied, tau_b, -distortion).
    An undefined tau (NaN) ranks below every defined one."""
    tau = torch.nan_to_num(tau, nan=-2.0)
    return {"constraints": [nsat.double(), -dist],
            "tau": [tau.double(), -dist],
            "constraints_tau": [nsat.double(), tau.double(), -dist]}[rule]


def better(a: list, b: list) -> torch.Tensor:
    """``(n,)`` bool: key ``a`` strictly better than key ``b`` (lexicographic)."""
    out = torch.zeros_like(a[0], dtype=torch.bool)
    tie = torch.ones_like(out)
    for u, v in zip(a, b):
        out = out | (tie & (u > v))
        tie = tie & (u == v)
    return out


def _col(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *([1] * (like.dim() - 1)))


def optimize(rt: Runtime, x: torch.Tensor, aux: dict, hinge: Callable, *, lambda_init: float,
             n_search: int, max_iter: int, lr: float, run_select: str, final_select: str,
             tanh_eps: float, check_every: int, bar) -> dict:
    """Minimise ``||r||_2^2 + λ hinge(x + r)`` per image with a binary search on λ.

    ``x`` ``(n, C, H, W)``; ``aux``: per-image tensors (first axis ``n``) passed to ``hinge``, which must
    include ``target`` (``y*``), ``ab`` (``A | B``) and ``ytau`` ``(n, L)``. Returns ``x_adv``,
    ``iterations``, ``param`` (λ of the returned example, NaN for the clean image), ``n_runs_ok``.
    """
    n, dev = x.shape[0], x.device
    with torch.no_grad():
        logits0 = rt.logits(x)
    nsat0 = n_satisfied(torch.sigmoid(logits0), aux["target"], aux["ab"])
    tau0 = kendall_tau_b(logits0, aux["ytau"])
    zeros = torch.zeros(n, device=dev, dtype=torch.float64)
    out = {"x_adv": x.clone(), "iterations": torch.zeros(n, dtype=torch.int64, device=dev),
           "param": torch.full((n,), torch.nan, device=dev), "n_runs_ok": torch.zeros(n, dtype=torch.int64, device=dev)}
    w0 = to_w(x, tanh_eps)
    S = {"x0": x, "w0": w0, "w": w0.clone(), "m": torch.zeros_like(x), "v": torch.zeros_like(x),
         "t": zeros.clone(), "k": torch.zeros(n, dtype=torch.int64, device=dev), "s": torch.zeros_like(out["iterations"]),
         "lam": torch.full((n,), float(lambda_init), device=dev, dtype=torch.float64), "lo": zeros.clone(),
         "hi": torch.full((n,), torch.inf, device=dev, dtype=torch.float64),
         "prev": torch.full((n,), torch.inf, device=dev, dtype=torch.float64), "iters": torch.zeros_like(out["iterations"]),
         "ok": torch.zeros(n, dtype=torch.bool, device=dev), "nok": torch.zeros_like(out["iterations"]),
         "rb_x": x.clone(), "rb_nsat": torch.full_like(nsat0, -1), "rb_tau": torch.full_like(tau0, -torch.inf),
         "rb_dist": torch.full_like(zeros, torch.inf),
         "b_x": x.clone(), "b_nsat": nsat0, "b_tau": tau0, "b_dist": zeros.clone(), "b_lam": torch.full_like(zeros, torch.nan),
         "idx": torch.arange(n, device=dev), **aux}
    # images already in the target state are returned unchanged, at zero cost
    S = _flush(S, out, nsat0 == aux["ab"].sum(1))
    window = max(1, max_iter // 10)
    b1, b2 = ADAM_BETAS
    for step in range(n_search * max_iter):
        if S["idx"].numel() == 0:
            break
        live = S["s"] < n_search
        w = S["w"].detach().requires_grad_(True)
        xa = from_w(w)
        logits = rt.logits(xa)
        probs = torch.sigmoid(logits)
        h, goal = hinge(logits, probs, S)
        dist = (xa - S["x0"]).flatten(1).pow(2).sum(1)
        loss = dist + S["lam"].to(dist.dtype) * h
        (g,) = torch.autograd.grad(loss.sum(), w)
        with torch.no_grad():
            xa, dist, loss = xa.detach(), dist.double(), loss.double()
            nsat = n_satisfied(probs, S["target"], S["ab"])
            tau = kendall_tau_b(logits, S["ytau"])
            # best iterate of the current λ run
            imp = live & better(selection_key(run_select, nsat, tau, dist),
                                selection_key(run_select, S["rb_nsat"], S["rb_tau"], S["rb_dist"]))
            S["rb_x"] = torch.where(_col(imp, xa), xa, S["rb_x"])
            S["rb_nsat"] = torch.where(imp, nsat, S["rb_nsat"])
            S["rb_tau"] = torch.where(imp, tau, S["rb_tau"])
            S["rb_dist"] = torch.where(imp, dist, S["rb_dist"])
            S["ok"] = S["ok"] | (live & goal)
            # per-image Adam step (finished rows may keep moving: nothing of theirs is read any more)
            S["t"] = S["t"] + 1
            tt = _col(S["t"], g)
            S["m"].mul_(b1).add_(g, alpha=1 - b1)
            S["v"].mul_(b2).addcmul_(g, g, value=1 - b2)
            step_ = lr * (S["m"] / (1 - b1 ** tt).float()) / ((S["v"] / (1 - b2 ** tt).float()).sqrt() + ADAM_EPS)
            w_new = S["w"] - step_
            S["k"] = S["k"] + live
            S["iters"] = S["iters"] + live
            check = live & (S["k"] % window == 0)
            abort = check & (loss > S["prev"] * (1 - ABORT_REL))
            S["prev"] = torch.where(check, loss, S["prev"])
            end = live & ((S["k"] >= max_iter) | abort)
            _end_of_run(S, end, w_new, final_select)
        if (step + 1) % check_every == 0 or step + 1 == n_search * max_iter:
            n_before = int(S["idx"].numel())
            S = _flush(S, out, S["s"] >= n_search)
            bar.update(check_every * n_before)
    return out


def _end_of_run(S: dict, end: torch.Tensor, w_new: torch.Tensor, final_select: str) -> None:
    """Commit the run's best iterate, move λ (binary search), restart ended rows from the clean image."""
    gimp = end & better(selection_key(final_select, S["rb_nsat"], S["rb_tau"], S["rb_dist"]),
                        selection_key(final_select, S["b_nsat"], S["b_tau"], S["b_dist"]))
    S["b_x"] = torch.where(_col(gimp, S["b_x"]), S["rb_x"], S["b_x"])
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
    e4 = _col(end, S["w"])
    S["w"] = torch.where(e4, S["w0"], w_new)
    S["m"].masked_fill_(e4, 0)
    S["v"].masked_fill_(e4, 0)
    S["t"] = torch.where(end, 0, S["t"])
    S["k"] = torch.where(end, 0, S["k"])
    S["prev"] = torch.where(end, torch.inf, S["prev"])
    S["ok"] = S["ok"] & ~end
    S["rb_nsat"] = torch.where(end, -1, S["rb_nsat"])
    S["rb_tau"] = torch.where(end, -torch.inf, S["rb_tau"])
    S["rb_dist"] = torch.where(end, torch.inf, S["rb_dist"])


def _flush(S: dict, out: dict, finished: torch.Tensor) -> dict:
    """Write the results of finished rows into ``out`` and drop them from the active batch."""
    if not bool(finished.any()):
        return S
    idx = S["idx"][finished]
    out["x_adv"][idx] = S["b_x"][finished]
    out["iterations"][idx] = S["iters"][finished]
    out["param"][idx] = S["b_lam"][finished].float()
    out["n_runs_ok"][idx] = S["nok"][finished]
    keep = (~finished).nonzero().flatten()
    return {k: v.index_select(0, keep) for k, v in S.items()}
