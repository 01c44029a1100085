"""ML-DP: the multi-label DeepFool of Algorithm 1 (Eq. 6-7), batched over images, in two forms.

* ``"greedy"`` (mlnb's form, the default): constraints linearised on the *logits*, only the currently
  violated ones enter ``P``, an overshoot of 0.02, early stop once every constraint holds.
* ``"paper"``: Algorithm 1 and Eq. (6)-(7) as printed: the sigmoid *probabilities* ``F`` linearised,
  all ``|A| + |B|`` constraints as equalities ``F_k + ∇F_k^T Δr = 0.5``, ``max_iter + 1`` steps.

Both solve for the minimum-norm step ``Δr = P (P^T P)^+ q`` with :func:`min_norm_step`.

Introduced in notebooks/04_ml_deepfool.ipynb.
"""
from __future__ import annotations

import torch

from .. import validate as V
from ..target import Target
from ._core import (AttackResult, Runtime, finalize, flush_finished, progress_bar, run_in_chunks,
                    setup)

ML_DP_FORMS = ("greedy", "paper")
# Relative cut on the singular values of the *row-normalised* P (see min_norm_step). Each row is a
# float32 gradient (relative error >= 6e-8 per entry, a few times more after backprop), so with unit
# rows a direction whose singular value is below ~sqrt(L) * 1e-7 ~ 5e-7 is float32 noise: two
# constraints that agree to that precision are the same constraint. 1e-5 cuts 20x above that noise
# floor and keeps any pair of constraints more than 1e-5 rad apart (cosine < 1 - 5e-11; cosine 0.99999
# gives a singular value of 3e-3). Applied to the Gram matrix of the unit rows, whose eigenvalues are
# the squared singular values, it is 1e-10, which float64 resolves (eigenvalue error ~ L * 2e-16).
SVD_RTOL = 1e-5


def n_steps(max_iter: int, form: str) -> int:
    """Greedy steps an image may take: ``max_iter`` (greedy), ``max_iter + 1`` (paper: Algorithm 1
    line 4 loops ``while i <= maxiter`` from ``i = 0``)."""
    return max_iter + 1 if form == "paper" else max_iter


def jacobian_rows(rt: Runtime, x: torch.Tensor, cols: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(n, L)`` at ``x`` and the Jacobian rows ``∂g_j/∂x`` for ``j in cols``, ``(n, L, d)``
    (zero rows for the other labels). One forward, one backward per label column; each image's
    rows are its own because the batch sum separates over images."""
    xg = x.detach().requires_grad_(True)
    logits = rt.logits(xg)
    # float32, or the dtype of float64 images and logits (never rounded down)
    dtype = torch.promote_types(torch.promote_types(x.dtype, logits.dtype), torch.float32)
    J = torch.zeros(x.shape[0], logits.shape[1], x[0].numel(), device=x.device, dtype=dtype)
    for i, j in enumerate(cols):
        (g,) = torch.autograd.grad(logits[:, j].sum(), xg, retain_graph=i + 1 < len(cols))
        J[:, j] = g.flatten(1)
    return logits.detach(), J


def min_norm_step(M: torch.Tensor, rhs: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Minimum-norm ``Δr`` ``(n, d)`` float64 with ``w_k M_k^T Δr = rhs_k`` for every row ``k`` (least
    squares where the rows are numerically dependent): Algorithm 1 line 6, ``Δr = P (P^T P)^+ q``
    with ``P^T = diag(w) M``, ``M`` ``(n, K, d)``, ``q = rhs`` and ``w = weight`` ``(n, K)`` (``>= 0``,
    default 1; ``w_k = 0`` leaves row ``k`` out), float64, one system per image.

    Each row is scaled to unit norm first (``U_k = M_k / ||M_k||``, ``b_k = rhs_k / (w_k ||M_k||)``: the
    solution set of each equation is unchanged), so that the cut :data:`SVD_RTOL` measures only how
    collinear the constraints are, not how steep each one is: a weak but independent constraint (a
    saturated sigmoid, ``w = σ'(z)`` of 1e-9) is kept, and ``w`` never multiplies ``M`` (no underflow).
    Rows with ``w_k ||M_k|| = 0`` are dropped, so an all-zero ``M`` gives ``Δr = 0``, never NaN.
    """
    norm = torch.linalg.vector_norm(M, dim=2, dtype=torch.float64)
    size = norm if weight is None else norm * weight.double()
    live = size > torch.finfo(torch.float64).tiny
    U = M.to(torch.float64, copy=True).mul_(torch.where(live, 1.0 / torch.where(live, norm, 1.0), 0.0)[:, :, None])
    b = torch.where(live, rhs.double() / torch.where(live, size, 1.0), 0.0)
    G = U @ U.transpose(1, 2)
    alpha = torch.linalg.pinv(G, rtol=SVD_RTOL ** 2, hermitian=True) @ b[:, :, None]
    return (U.transpose(1, 2) @ alpha).squeeze(2)


def greedy_step(J: torch.Tensor, logits: torch.Tensor, target: torch.Tensor, violated: torch.Tensor) -> torch.Tensor:
    """``form="greedy"``: minimum-norm ``Δr`` ``(n, d)`` float64 with ``∇g_k^T Δr = -g_k`` for every
    violated constraint ``k`` (Algorithm 1 line 6 on the logits ``g``: Eq. 3a on logits, ``P = -s ⊙
    ∂g/∂x``, ``q = s ⊙ g``, ``s = ±1`` the target sign, which cancels). Satisfied constraints are
    left out. ``J`` ``(n, L, d)``, ``logits``, ``violated`` ``(n, L)``."""
    del target  # s_k g_k + s_k ∇g_k^T Δr = 0  <=>  ∇g_k^T Δr = -g_k
    return min_norm_step(J, torch.where(violated, -logits.double(), 0.0), violated.double())


def paper_step(J: torch.Tensor, logits: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """``form="paper"``: minimum-norm ``Δr`` ``(n, d)`` float64 of Eq. (7) with every constraint of
    ``A ∪ B`` as an equality: ``∇F_k^T Δr = 0.5 - F_k`` (``P = (1_d y'^T) ⊙ ∂F'/∂x``, ``q = c - y' ⊙ F'``
    with ``c = 0.5 y'`` from Eq. 3b; ``y' = ±1`` cancels). From the logits ``z``, in float64:
    ``∇F_k = σ'(z_k) ∇z_k`` with ``σ'(z) = e^{-|z|} / (1 + e^{-|z|})^2`` (never ``p (1 - p)`` of a float32
    ``p``, exactly 0 beyond ``z ≈ 16.6``) and ``0.5 - F_k = -tanh(z_k / 2) / 2``.
    ``J`` ``(n, L, d)`` rows ``∂z/∂x``, ``logits``, ``ab`` ``(n, L)``."""
    z = logits.double()
    e = torch.exp(-z.abs())
    # rows outside A ∪ B get weight 0, which leaves them out of the system whatever their right-hand side
    return min_norm_step(J, -0.5 * torch.tanh(z / 2), torch.where(ab, e / (1 + e) ** 2, 0.0))


def deepfool(rt: Runtime, x: torch.Tensor, goal: Target, *, max_iter: int, overshoot: float, bar,
             form: str = "greedy") -> dict:
    """Algorithm 1 for ``x`` ``(n, C, H, W)`` and their :class:`~mlnb.target.Target` ``goal``.

    Iterates ``x_i = clip(x + (1 + overshoot) r_i, 0, 1)`` (``r_0 = 0``), ``r_{i+1} = r_i + Δr_i``
    with ``Δr_i`` from the Jacobian at ``x_i`` (:func:`greedy_step` or :func:`paper_step`), at most
    :func:`n_steps` steps (line 8's ``x_{i+1} = x_i + r_i`` read as ``x_{i+1} = x + r_{i+1}``). Best
    iterate (lines 1, 9-15): ``x* = x`` to start; each new iterate ``x_{i+1}`` (lines 13/15 print
    ``x_i``) replaces it when it satisfies more constraints of Eq. (4) (:meth:`~mlnb.target.Target.n_satisfied`, on the logits),
    or as many with a strictly smaller ``||x_{i+1} - x||_2`` (line 14 prints ``||x_i||_2``; the
    perturbation is meant). An image leaves the active batch when
    ``greedy``: every constraint holds; ``paper``: only when nothing can change any more (``x`` itself
    already meets every constraint, or ``Δr`` is exactly 0 so ``x_{i+1} = x_i``), the paper having no
    early stop. Returns ``x_adv``, ``iterations`` (steps taken)."""
    paper = form == "paper"
    steps = n_steps(max_iter, form)
    n, dev = x.shape[0], x.device
    cols = goal.constrained.any(0).nonzero().flatten().tolist()
    out = {"x_adv": x.clone(), "iterations": torch.zeros(n, dtype=torch.int64, device=dev)}
    S = {"x0": x, "r": torch.zeros_like(x), "goal": goal, "idx": torch.arange(n, device=dev),
         "b_x": x.clone(), "b_nsat": torch.full((n,), -1, dtype=torch.int64, device=dev),
         "b_dist": torch.full((n,), torch.inf, device=dev), "iters": torch.zeros(n, dtype=torch.int64, device=dev)}
    for it in range(steps + 1):
        xi = (S["x0"] + (1 + overshoot) * S["r"]).clamp(0, 1)
        last = it == steps
        if last:
            with torch.no_grad():
                logits = rt.logits(xi)
        else:
            logits, J = jacobian_rows(rt, xi, cols)
        nsat = S["goal"].n_satisfied(logits)
        dist = (xi - S["x0"]).flatten(1).norm(dim=1)
        imp = (nsat > S["b_nsat"]) | ((nsat == S["b_nsat"]) & (dist < S["b_dist"]))
        S["b_x"] = torch.where(imp.view(-1, 1, 1, 1), xi, S["b_x"])
        S["b_nsat"] = torch.where(imp, nsat, S["b_nsat"])
        S["b_dist"] = torch.where(imp, dist, S["b_dist"])
        if last:
            done = torch.ones_like(nsat, dtype=torch.bool)
        elif paper:
            step = paper_step(J, logits, S["goal"].constrained)
            done = ((S["b_nsat"] == S["goal"].n_constraints) & (S["b_dist"] == 0)) | ~(step != 0).any(1)
        else:
            done = nsat == S["goal"].n_constraints
        n_before = int(S["idx"].numel())
        S = _flush(S, out, done)
        bar.update(n_before)
        if S["idx"].numel() == 0:
            break
        keep = (~done).nonzero().flatten()
        if paper:
            step = step.index_select(0, keep)
        else:
            logits, J = logits.index_select(0, keep), J.index_select(0, keep)
            violated = S["goal"].constrained & ~S["goal"].constraints_met(logits)
            step = greedy_step(J, logits, S["goal"].y_star, violated)
        # float32 can overflow on the huge steps of a saturated sigmoid: ±inf -> ±max, so r never holds NaN
        step = torch.nan_to_num(step.to(S["r"].dtype), nan=0.0)
        S["r"] = S["r"] + step.view_as(S["r"])
        S["iters"] = S["iters"] + 1
    return out


def _flush(S: dict, out: dict, finished: torch.Tensor) -> dict:
    return flush_finished(S, out, finished, {"x_adv": "b_x", "iterations": "iters"})


@torch.enable_grad()  # also when called under torch.no_grad(): every attack takes gradients
def ml_dp(model, x, y, A=None, B=None, *, generator=None, progress=True, max_iter: int = 20, overshoot: float | None = None,
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
    image can depend on the batch (the runner attacks it in one call per scenario). The greedy form
    can end a label within rounding of the line too, when the clip to ``[0, 1]`` cuts its step short
    (the 2% overshoot of a shortened step is tiny): for such an image the constraints met, hence
    ``success``, can differ between batch sizes (measured on linear models with pixels at the box edge:
    7 of 48 images; none when no pixel is clipped). The runner attacks it in chunks of its batch size.

    ``param`` is NaN (no trade-off parameter); ``iterations`` counts the steps taken.

    >>> res = ml_dp(model.eval(), x, y, A, B, max_iter=20, form="paper")
    >>> res.n_satisfied

    Introduced in notebooks/04_ml_deepfool.ipynb.
    """
    rt, goal = setup(model, x, y, A, B, batch_size=batch_size, autocast_dtype=autocast_dtype,
                     channels_last=channels_last)
    V.check_choice("form", form, ML_DP_FORMS)
    V.check_int("max_iter", max_iter, 0 if form == "paper" else 1)
    if overshoot is None:
        overshoot = 0.0 if form == "paper" else 0.02
    V.check_positive("overshoot", overshoot, allow_zero=True)
    bar = progress_bar(x.shape[0] * (n_steps(max_iter, form) + 1), progress, "ml_dp")
    with bar:
        r = run_in_chunks(x.shape[0], batch_size, x.device,
                          lambda sl: deepfool(rt, x[sl], goal[sl], max_iter=max_iter, overshoot=overshoot,
                                              bar=bar, form=form))
        bar.update(bar.total - bar.n)
    nan = torch.full((x.shape[0],), torch.nan, device=x.device)
    return finalize(rt, x, r["x_adv"], goal, r["iterations"], nan, {})
