"""FGS and FG kernels (Sec. IV-C): one gradient of the per-label sigmoid loss, many ε.

Introduced in notebooks/02_baselines_fgs_fg.ipynb.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .attack_core import Runtime
from .attack_losses import n_satisfied


def target_gradient(rt: Runtime, x: torch.Tensor, target: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """``∇_x`` of the per-image sum over ``A ∪ B`` of the sigmoid (BCE-with-logits) loss towards
    ``y*``, ``(n, C, H, W)``. Summing per image keeps every image's gradient its own."""
    xg = x.detach().requires_grad_(True)
    logits = rt.logits(xg)
    loss = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="none")
    (g,) = torch.autograd.grad((loss * ab).sum(), xg)
    return g


def direction(g: torch.Tensor, norm: str) -> torch.Tensor:
    """Unit step: ``sign(g)`` (``"linf"``, FGS) or ``sqrt(d) g / ||g||_2`` (``"rms"``, FG: an ε step
    then has root-mean-square ε per pixel, the same scale as FGS's ε and as RMSD). Zero where g is 0."""
    if norm == "linf":
        return torch.sign(g)
    flat = g.flatten(1)
    nrm = flat.norm(dim=1, keepdim=True)
    unit = torch.where(nrm > 0, flat / nrm.clamp(min=torch.finfo(g.dtype).tiny), 0.0)
    return (unit * flat.shape[1] ** 0.5).view_as(g)


def one_step(rt: Runtime, x: torch.Tensor, target: torch.Tensor, ab: torch.Tensor,
             eps_grid: torch.Tensor, norm: str) -> dict:
    """Best of ``clip(x - ε d)`` over ``eps_grid`` (ascending, starting at 0) per image, by (most
    constraints of Eq. 4 satisfied, then smaller L2 distortion). Returns ``x_adv``, ``eps``."""
    d = direction(target_gradient(rt, x, target, ab), norm)
    best_x = x.clone()
    best_eps = torch.zeros(x.shape[0], device=x.device)
    best_key = torch.full((x.shape[0],), -1, dtype=torch.int64, device=x.device)
    best_dist = torch.full((x.shape[0],), torch.inf, device=x.device)
    with torch.no_grad():
        for eps in eps_grid.tolist():
            xa = (x - eps * d).clamp(0, 1)
            nsat = n_satisfied(torch.sigmoid(rt.logits(xa)), target, ab)
            dist = (xa - x).flatten(1).norm(dim=1)
            imp = (nsat > best_key) | ((nsat == best_key) & (dist < best_dist))
            best_x = torch.where(imp.view(-1, 1, 1, 1), xa, best_x)
            best_eps = torch.where(imp, eps, best_eps)
            best_key = torch.where(imp, nsat, best_key)
            best_dist = torch.where(imp, dist, best_dist)
    return {"x_adv": best_x, "eps": best_eps}
