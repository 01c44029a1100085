"""TkML-AP (Hu et al., "TkML-AP: Adversarial Attacks to Top-k Multi-Label Learning", ICCV 2021), batched.

A top-k multi-label classifier predicts the ``k`` labels of largest score (success is read with
:func:`~mlnb.attacks.topk_metrics.topk_success`, not at the 0.5 threshold). Three attacks, each a
minimal-L2 search built on the k-th largest score ``g_[k]``:

* :func:`topk_untargeted` (TkML-AP-U): push every true label below the k-th largest score of the
  other labels, ``Σ_{j ∈ Y} [g_j - v_[k] + κ]_+`` with ``v_[k]`` the k-th largest logit outside ``Y``;
* :func:`topk_targeted` (TkML-AP-T): lift the target labels ``T`` (``|T| <= k``) into the top k,
  ``Σ_{t ∈ T} [h_[k-|T|+1] - g_t + κ]_+`` with ``h_[m]`` the m-th largest logit outside ``T``;
* :func:`topk_universal` (TkML-AP-Uv): one perturbation for many images, built by adding the untargeted
  perturbations of the images it does not fool yet and projecting back onto an L2 ball.

Each per-image search is plain gradient descent (the reference's SGD) on the hinge in the CW ``tanh``
space, the perturbation projected onto the L2 ball of radius ``eps``; the returned example is the
successful iterate of smallest L2 (the clean image if none). Targets come from
:func:`topk_targets` (the paper's strategies: best, random, worst).

* **The margin** ``κ`` (``kappa``): an iterate counts as successful (it may be returned, and ends an
  untargeted search) only when the goal holds by ``κ``, i.e. the hinge is 0
  (:func:`~mlnb.attacks.topk_metrics.topk_margin` ``>= κ``); ``κ = 0`` is plain top-k success. The reported
  ``success`` is plain top-k success of the returned example whatever ``κ``; its margin is
  ``extras["margin"]``. An image whose iterates never reach the margin gets the clean image back.
* **Already there**: an image whose clean logits already reach the goal (by ``κ``) is returned exactly
  as given, with 0 iterations, and takes no step (it stays in the batch, frozen, so that the other
  images' results do not depend on it).
* **Pixels at exactly 0 or 1 hardly move**: such a pixel starts at ``w = atanh(±(1 - 1e-6))``, where
  ``d x' / d m`` is about ``1e-6``; the gradient reaching ``m`` is scaled by it and so is the step's effect
  on the pixel, and plain gradient descent does not rescale it (Adam, as in :func:`~mlnb.attacks.ml_cw`,
  would), so the pixel moves about ``1e-12 · lr`` times its gradient per step. On binary (0 / 1) images
  every pixel is stuck and the attack fails (success 0, no warning). Map such images into ``[δ, 1 - δ]``
  first (e.g. ``x = 0.01 + 0.98 * x``, if the model tolerates the change). In :func:`topk_universal` the
  same holds for the pixels that ``clip(x + δ)`` puts at 0 or 1.

Introduced in notebooks/13_successors.ipynb.
"""
from __future__ import annotations

import dataclasses

import torch

from .. import validate as V
from ..target import Target
from ._core import AttackResult, finalize, progress_bar, run_in_chunks, setup
from .topk_metrics import _check_scores, _in_topk, _margin, _reached, _success, kth_other

TOPK_STRATEGIES = ("best", "random", "worst")
TANH_EPS = 1e-6


def topk_targets(logits: torch.Tensor, y: torch.Tensor, k: int, strategy: str = "random",
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """``(N, L)`` bool: ``k`` target labels per image among the labels outside ``y``, picked by score
    (``logits`` ``(N, L)`` of the clean images): ``"best"`` the ``k`` highest (easiest to lift),
    ``"worst"`` the ``k`` lowest, ``"random"`` ``k`` drawn uniformly with ``generator``. Every image
    needs at least ``k`` negative labels; ``k`` in ``[1, L]``; ``generator`` a ``torch.Generator`` or None.

    Introduced in notebooks/13_successors.ipynb."""
    V.check_choice("strategy", strategy, TOPK_STRATEGIES)
    _check_scores(logits, y, k)
    V.check_generator(generator)
    short = (~y).sum(1) < k
    if bool(short.any()):
        raise ValueError(f"images {short.nonzero().flatten().tolist()[:10]} have fewer than k={k} negative "
                         f"labels to target: pass a smaller k or drop those images")
    if strategy == "random":
        gdev = generator.device if generator is not None else "cpu"
        key = torch.rand(y.shape, generator=generator, device=gdev).to(y.device)
    else:
        key = logits.double() if strategy == "best" else -logits.double()
    key = torch.where(y, -torch.inf, key)
    idx = key.topk(k, dim=1).indices
    return torch.zeros_like(y).scatter_(1, idx, True)


def topk_hinge(logits: torch.Tensor, y: torch.Tensor, k: int, targets: torch.Tensor | None = None,
               kappa: float = 0.0) -> torch.Tensor:
    """``(N,)`` per-image loss (module docstring): untargeted (``targets`` None) ``Σ_{j∈Y} [g_j - v_[k] +
    κ]_+``; targeted ``Σ_{t∈T} [h_[k-|T|+1] - g_t + κ]_+``. Zero exactly when the top-k goal holds by
    the margin ``κ``. ``logits`` ``(N, L)``, ``y``, ``targets`` ``(N, L)`` bool.

    Introduced in notebooks/13_successors.ipynb (through the attacks)."""
    ref = kth_other(logits, y, k, targets)  # v_[k] or h_[k-|T|+1]
    if targets is None:
        return torch.where(y, (logits - ref + kappa).clamp(min=0), 0.0).sum(1)
    return torch.where(targets, (ref - logits + kappa).clamp(min=0), 0.0).sum(1)


def _project(eta: torch.Tensor, eps: float) -> torch.Tensor:
    """``eta`` ``(n, ...)`` scaled onto the L2 ball of radius ``eps`` per image."""
    norm = eta.flatten(1).norm(dim=1).clamp(min=1e-12)
    return eta * (eps / norm).clamp(max=1.0).view(-1, *([1] * (eta.dim() - 1)))


def topk_kernel(rt, x: torch.Tensor, y: torch.Tensor, targets, *, k: int, eps: float, max_iter: int,
                lr: float, kappa: float, stop_early: bool, bar) -> dict:
    """The per-image search for ``x`` ``(n, C, H, W)``: ``x' = x + P_eps((tanh(w + m) + 1)/2 - x)`` with
    ``w = atanh((2x - 1)(1 - 1e-6))``, ``m`` updated by SGD (``lr``) on :func:`topk_hinge`; keeps the
    successful iterate (goal reached by the margin ``kappa``) of smallest L2. ``stop_early``: an image stops
    at its first success (untargeted, as the reference). An image already successful at ``x`` is frozen:
    returned as given, 0 iterations. Returns ``x_adv``, ``iterations``, ``found`` ``(n,)`` bool (the goal
    reached by ``kappa``, at ``x`` or by an iterate).

    Introduced in notebooks/13_successors.ipynb (through the attacks)."""
    n = x.shape[0]
    with torch.no_grad():
        done = _reached(rt.logits(x), y, k, targets, kappa)  # already there: frozen, returned unchanged
    w = torch.atanh((2 * x - 1) * (1 - TANH_EPS))
    m = torch.zeros_like(x, requires_grad=True)
    best_x, best_l2 = x.clone(), torch.full((n,), torch.inf, device=x.device)
    found, active = done.clone(), ~done
    iters = torch.zeros(n, dtype=torch.int64, device=x.device)
    for _ in range(max_iter):
        if not bool(active.any()):
            break
        xa = x + _project((torch.tanh(w + m) + 1) / 2 - x, eps)
        logits = rt.logits(xa)
        loss = topk_hinge(logits, y, k, targets, kappa)
        (grad,) = torch.autograd.grad(loss.sum(), m)
        with torch.no_grad():
            ok = _reached(logits.detach(), y, k, targets, kappa) & active
            l2 = (xa - x).flatten(1).norm(dim=1)
            imp = ok & (l2 < best_l2)
            best_x = torch.where(imp.view(-1, 1, 1, 1), xa.detach(), best_x)
            best_l2 = torch.where(imp, l2, best_l2)
            found |= ok
            iters += active.long()
            if stop_early:
                active &= ~ok
            m -= lr * grad * active.view(-1, 1, 1, 1)
        bar.update(n)
    return {"x_adv": best_x, "iterations": iters, "found": found}


def _check(k, eps, max_iter, lr, kappa, y, *, untargeted: bool) -> None:
    """The labels ``y`` and the parameters shared by the top-k attacks; ``untargeted``: also that the attack
    exists for every image (a true label to push out, ``k`` others to take its place)."""
    V.check_label_matrix(y, "y")
    if y.shape[1] < 2:
        raise ValueError(f"top-k attacks need at least 2 labels, but y has {y.shape[1]} column: a top-k set of a "
                         "single label cannot change; use the threshold attacks (e.g. ml_cw) for one label")
    V.check_int_range("k", k, 1, int(y.shape[1]) - 1)
    V.check_positive("eps", eps)
    V.check_int("max_iter", max_iter, 1)
    V.check_positive("lr", lr)
    V.check_positive("kappa", kappa, allow_zero=True)
    if not untargeted:
        return
    empty = ~y.any(1)
    if bool(empty.any()):
        raise ValueError(f"every image needs at least one true label in y for an untargeted top-k attack; images "
                         f"{empty.nonzero().flatten().tolist()[:10]} have none: attack only images with labels")
    if bool(((~y).sum(1) < k).any()):
        raise ValueError(f"some images have fewer than k={k} labels outside y: no untargeted top-{k} attack "
                         f"exists for them; pass a smaller k")


def _result(res: AttackResult, y, k, targets, found) -> AttackResult:
    """Top-k success replaces the threshold reading of :func:`finalize` (kept in ``extras``)."""
    ok = _success(res.logits, y, k, targets)
    extras = {**res.extras, "threshold_success": res.success, "k": k, "found": found,
              "in_topk": _in_topk(res.logits, k), "margin": _margin(res.logits, y, k, targets)}
    return dataclasses.replace(res, success=ok, n_satisfied=ok.long(), extras=extras)


@torch.enable_grad()  # also inside a caller's torch.no_grad()
def topk_untargeted(model, x, y, *, k: int = 1, eps: float = 10.0, max_iter: int = 300, lr: float = 0.01,
                    kappa: float = 0.0, generator=None, progress=True, batch_size: int | None = None,
                    autocast_dtype=None, channels_last: bool = False) -> AttackResult:
    """TkML-AP-U: no true label of ``y`` ``(N, L)`` bool may stay among the top ``k`` labels of ``x``
    ``(N, C, H, W)``. Minimises :func:`topk_hinge` by SGD in ``tanh`` space inside the L2 ball ``eps``,
    stopping each image at its first success by the margin ``kappa`` (the reference's rule; module
    docstring). ``success`` ``(N,)`` is plain :func:`~mlnb.attacks.topk_metrics.topk_success` (``kappa``
    not required); ``n_satisfied`` is 1 where it holds; ``extras["threshold_success"]`` is the
    0.5-threshold reading (every true label negative); ``extras["margin"]`` ``(N,)`` the margin reached,
    ``extras["found"]`` where ``kappa`` was reached; ``param`` NaN. Images already successful by ``kappa``
    come back unchanged with 0 iterations; pixels at exactly 0 or 1 hardly move (module docstring: map
    binary images into ``[δ, 1 - δ]``). ``generator`` is accepted for the uniform signature.

    >>> res = topk_untargeted(model.eval(), x, y, k=3, eps=10.0)

    Introduced in notebooks/13_successors.ipynb.
    """
    _check(k, eps, max_iter, lr, kappa, y, untargeted=True)
    rt, goal = setup(model, x, Target(y, y, torch.zeros_like(y)), None, None, batch_size=batch_size,
                     autocast_dtype=autocast_dtype, channels_last=channels_last)
    return _run(rt, x, goal, y, None, k=k, eps=eps, max_iter=max_iter, lr=lr, kappa=kappa, stop_early=True,
                progress=progress, batch_size=batch_size, name="topk_untargeted")


@torch.enable_grad()  # also inside a caller's torch.no_grad()
def topk_targeted(model, x, y, targets, *, k: int = 3, eps: float = 10.0, max_iter: int = 300, lr: float = 0.01,
                  kappa: float = 0.0, generator=None, progress=True, batch_size: int | None = None,
                  autocast_dtype=None, channels_last: bool = False) -> AttackResult:
    """TkML-AP-T: every label of ``targets`` ``(N, L)`` bool (``1 <= |T| <= k``, e.g. from
    :func:`topk_targets`) must enter the top ``k`` of ``x`` ``(N, C, H, W)``. Runs all ``max_iter`` SGD
    steps and returns the iterate of smallest L2 that reaches the goal by ``kappa`` (the reference's
    rule). Result fields, already successful images and pixels at 0 or 1 as in :func:`topk_untargeted`;
    ``extras["threshold_success"]``: at the 0.5 threshold every label of ``targets`` is positive and every
    true label of ``y`` negative (``Target(y, A=y ^ targets, B=∅)``; the other labels are not constrained).

    >>> t = topk_targets(model(x), y, 3, "random", generator=g)
    >>> res = topk_targeted(model.eval(), x, y, t, k=3)

    Introduced in notebooks/13_successors.ipynb.
    """
    _check(k, eps, max_iter, lr, kappa, y, untargeted=False)
    V.check_label_matrix(targets, "targets", int(y.shape[1]))
    V.check_same_rows(y=y, targets=targets)
    true = (targets & y).any(1)
    if bool(true.any()):
        raise ValueError(f"targets must be labels outside y, but images {true.nonzero().flatten().tolist()[:10]} have "
                         "true labels among their targets: pass targets from topk_targets(logits, y, k)")
    n_t = targets.sum(1)
    if bool((n_t == 0).any()) or bool((n_t > k).any()):
        raise ValueError(f"every image needs between 1 and k={k} target labels, got counts "
                         f"{sorted(set(n_t.tolist()))}: pass targets from topk_targets(logits, y, k)")
    rt, goal = setup(model, x, Target(y, y ^ targets, torch.zeros_like(y)), None, None, batch_size=batch_size,
                     autocast_dtype=autocast_dtype, channels_last=channels_last)
    return _run(rt, x, goal, y, targets, k=k, eps=eps, max_iter=max_iter, lr=lr, kappa=kappa, stop_early=False,
                progress=progress, batch_size=batch_size, name="topk_targeted")


def _run(rt, x, goal, y, targets, *, k, eps, max_iter, lr, kappa, stop_early, progress, batch_size, name):
    bar = progress_bar(x.shape[0] * max_iter, progress, name)
    with bar:
        r = run_in_chunks(x.shape[0], batch_size, x.device, lambda sl: topk_kernel(
            rt, x[sl], y[sl], None if targets is None else targets[sl], k=k, eps=eps, max_iter=max_iter, lr=lr,
            kappa=kappa, stop_early=stop_early, bar=bar))
        bar.update(bar.total - bar.n)
    nan = torch.full((x.shape[0],), torch.nan, device=x.device)
    res = finalize(rt, x, r["x_adv"], goal, r["iterations"], nan, {})
    return _result(res, y, k, targets, r["found"])


@torch.enable_grad()  # also inside a caller's torch.no_grad()
def topk_universal(model, x, y, *, k: int = 1, eps: float = 10.0, radius: float = 10.0, passes: int = 5,
                   fooling_goal: float = 0.9, chunk: int = 8, max_iter: int = 300, lr: float = 0.01,
                   kappa: float = 0.0, generator=None, progress=True, autocast_dtype=None,
                   channels_last: bool = False) -> AttackResult:
    """TkML-AP-Uv: one perturbation ``δ`` ``(1, C, H, W)`` for all of ``x`` ``(N, C, H, W)`` (untargeted,
    top ``k``). Each pass goes over the images in chunks of ``chunk``; the images of a chunk that ``δ``
    does not fool yet get :func:`topk_untargeted` at ``clip(x + δ)`` (radius ``eps``), and the sum of
    the successful perturbations is added to ``δ``, projected onto the L2 ball ``radius``. Passes stop
    at ``passes`` or once the fooling rate reaches ``fooling_goal``. ``chunk=1`` is the reference's
    image-by-image update. An image counts as fooled (not attacked again) when ``δ`` reaches its goal by
    the margin ``kappa``; ``fooling_goal`` and ``extras["fooling_rate"]`` (one float per pass) use plain
    top-k success, as ``success`` (each image). ``x_adv = clip(x + δ)``; ``extras["delta"]``. Pixels that
    ``clip(x + δ)`` puts at exactly 0 or 1 hardly move (module docstring).

    Introduced in notebooks/13_successors.ipynb.
    """
    _check(k, eps, max_iter, lr, kappa, y, untargeted=True)
    rt, goal = setup(model, x, Target(y, y, torch.zeros_like(y)), None, None, batch_size=None,
                     autocast_dtype=autocast_dtype, channels_last=channels_last)
    V.check_positive("radius", radius)
    V.check_int("passes", passes, 1)
    V.check_int("chunk", chunk, 1)
    V.check_positive("fooling_goal", fooling_goal)
    if fooling_goal > 1:
        raise ValueError(f"fooling_goal is a rate in (0, 1], got {fooling_goal}: pass e.g. fooling_goal=0.9")
    delta, rates, iters = torch.zeros_like(x[:1]), [], torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
    bar = progress_bar(passes * x.shape[0] * max_iter, progress, "topk_universal")
    with bar:
        for _ in range(passes):
            for start in range(0, x.shape[0], chunk):
                sl = slice(start, start + chunk)
                xs = (x[sl] + delta).clamp(0, 1)
                with torch.no_grad():
                    todo = ~_reached(rt.logits(xs), y[sl], k, None, kappa)
                if bool(todo.any()):
                    r = topk_kernel(rt, xs[todo], y[sl][todo], None, k=k, eps=eps, max_iter=max_iter, lr=lr,
                                    kappa=kappa, stop_early=True, bar=bar)
                    rows = torch.arange(start, min(start + chunk, x.shape[0]), device=x.device)[todo]
                    iters[rows] += r["iterations"]
                    gain = ((r["x_adv"] - xs[todo]) * r["found"].view(-1, 1, 1, 1)).sum(0, keepdim=True)
                    delta = _project(delta + gain, radius)
            with torch.no_grad():
                rates.append(float(_success(rt.logits((x + delta).clamp(0, 1)), y, k, None).float().mean()))
            if rates[-1] >= fooling_goal:
                break
        bar.update(bar.total - bar.n)
    nan = torch.full((x.shape[0],), torch.nan, device=x.device)
    res = finalize(rt, x, (x + delta).clamp(0, 1), goal, iters, nan, {"delta": delta, "fooling_rate": rates})
    return _result(res, y, k, None, _reached(res.logits, y, k, None, kappa))
