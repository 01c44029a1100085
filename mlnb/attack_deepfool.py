"""ML-DP kernel: the multi-label DeepFool of Algorithm 1 (Eq. 6-7), batched over images.

Introduced in notebooks/04_ml_deepfool.ipynb.
"""
from __future__ import annotations

import torch

from .attack_core import Runtime, flush_finished
from .attack_losses import n_satisfied, satisfied

PINV_RTOL = 1e-6  # singular values of P^T P below 1e-6 x the largest are treated as 0


def jacobian_rows(rt: Runtime, x: torch.Tensor, cols: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(n, L)`` at ``x`` and the Jacobian rows ``∂g_j/∂x`` for ``j in cols``, ``(n, L, d)``
    (zero rows for the other labels). One forward, one backward per label column; each image's
    rows are its own because the batch sum separates over images."""
    xg = x.detach().requires_grad_(True)
    logits = rt.logits(xg)
    J = torch.zeros(x.shape[0], logits.shape[1], x[0].numel(), device=x.device, dtype=torch.float32)
    for i, j in enumerate(cols):
        (g,) = torch.autograd.grad(logits[:, j].sum(), xg, retain_graph=i + 1 < len(cols))
        J[:, j] = g.flatten(1).float()
    return logits.detach(), J


def greedy_step(J: torch.Tensor, logits: torch.Tensor, target: torch.Tensor, violated: torch.Tensor) -> torch.Tensor:
    """Minimum-norm ``Δr`` ``(n, d)`` with ``∇g_k^T Δr = -g_k`` for every violated constraint ``k``.

    This is Algorithm 1 line 6, ``Δr = P (P^T P)^{-1} q``, written on the logits ``g`` (Eq. 3a on
    logits: ``P = -s ⊙ ∂g/∂x``, ``q = s ⊙ g``, ``s = ±1`` the target sign). Satisfied constraints
    are masked out (zero rows), so every image solves its own system of at most ``L`` equations in
    one batched call; the inverse is a float64 pseudo-inverse, safe for rank-deficient or all-zero
    Jacobians (e.g. saturated models), which give ``Δr = 0`` instead of NaN.
    """
    del target  # the target sign cancels: s_k g_k + s_k ∇g_k^T Δr = 0  <=>  ∇g_k^T Δr = -g_k
    Jm = (J * violated[:, :, None]).double()
    G = Jm @ Jm.transpose(1, 2)
    rhs = -(logits.double() * violated)
    alpha = torch.linalg.pinv(G, rtol=PINV_RTOL, hermitian=True) @ rhs[:, :, None]
    return (Jm.transpose(1, 2) @ alpha).squeeze(2).float()


def deepfool(rt: Runtime, x: torch.Tensor, target: torch.Tensor, ab: torch.Tensor, *, max_iter: int,
             overshoot: float, bar) -> dict:
    """Algorithm 1 for ``x`` ``(n, C, H, W)``: iterate ``x_i = clip(x + (1 + overshoot) r_i)``,
    ``r_{i+1} = r_i + Δr``, keep the iterate with the most satisfied constraints of Eq. (4), ties
    broken by the smaller ``||x_i - x||_2`` (the perturbation; Algorithm 1 line 14 prints
    ``||x_i||_2``, a typo). Images stop when every constraint holds or after ``max_iter`` steps and
    then leave the active batch. Returns ``x_adv``, ``iterations``."""
    n, dev = x.shape[0], x.device
    cols = ab.any(0).nonzero().flatten().tolist()
    out = {"x_adv": x.clone(), "iterations": torch.zeros(n, dtype=torch.int64, device=dev)}
    S = {"x0": x, "r": torch.zeros_like(x), "target": target, "ab": ab, "idx": torch.arange(n, device=dev),
         "b_x": x.clone(), "b_nsat": torch.full((n,), -1, dtype=torch.int64, device=dev),
         "b_dist": torch.full((n,), torch.inf, device=dev), "iters": torch.zeros(n, dtype=torch.int64, device=dev)}
    S["total"] = ab.sum(1)
    for it in range(max_iter + 1):
        xi = (S["x0"] + (1 + overshoot) * S["r"]).clamp(0, 1)
        last = it == max_iter
        if last:
            with torch.no_grad():
                logits = rt.logits(xi)
        else:
            logits, J = jacobian_rows(rt, xi, cols)
        probs = torch.sigmoid(logits)
        nsat = n_satisfied(probs, S["target"], S["ab"])
        dist = (xi - S["x0"]).flatten(1).norm(dim=1)
        imp = (nsat > S["b_nsat"]) | ((nsat == S["b_nsat"]) & (dist < S["b_dist"]))
        S["b_x"] = torch.where(imp.view(-1, 1, 1, 1), xi, S["b_x"])
        S["b_nsat"] = torch.where(imp, nsat, S["b_nsat"])
        S["b_dist"] = torch.where(imp, dist, S["b_dist"])
        done = nsat == S["total"]
        if last:
            done = torch.ones_like(done)
        n_before = int(S["idx"].numel())
        S = _flush(S, out, done)
        bar.update(n_before)
        if S["idx"].numel() == 0:
            break
        keep = (~done).nonzero().flatten()
        logits, J = logits.index_select(0, keep), J.index_select(0, keep)
        violated = S["ab"] & ~satisfied(torch.sigmoid(logits), S["target"], S["ab"])
        S["r"] = S["r"] + greedy_step(J, logits, S["target"], violated).view_as(S["r"])
        S["iters"] = S["iters"] + 1
    return out


def _flush(S: dict, out: dict, finished: torch.Tensor) -> dict:
    return flush_finished(S, out, finished, {"x_adv": "b_x", "iterations": "iters"})
