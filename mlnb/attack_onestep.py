"""FGS and FG kernels (Sec. IV-C): one gradient of the per-label sigmoid loss, many ε, and the two
ways of choosing ε: per image (mlnb) or one per scenario (the paper).

Introduced in notebooks/02_baselines_fgs_fg.ipynb.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .attack_core import Runtime
from .attack_losses import n_met


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


def grid_scores(rt: Runtime, x: torch.Tensor, target: torch.Tensor, ab: torch.Tensor,
                eps_grid: torch.Tensor, norm: str) -> dict:
    """One gradient per image, then ``clip(x - ε d)`` scored for every ``ε`` of ``eps_grid`` ``(G,)``.

    Returns ``d`` ``(n, C, H, W)`` (the unit step of :func:`direction`), ``n_met`` ``(n, G)`` int64
    (constraints of Eq. 4 met, decided on logits) and ``l2`` ``(n, G)`` (``||x_adv - x||_2``)."""
    d = direction(target_gradient(rt, x, target, ab), norm)
    n_met_, l2 = [], []
    with torch.no_grad():
        for eps in eps_grid.tolist():
            xa = (x - eps * d).clamp(0, 1)
            n_met_.append(n_met(rt.logits(xa), target, ab))
            l2.append((xa - x).flatten(1).norm(dim=1))
    return {"d": d, "n_met": torch.stack(n_met_, 1), "l2": torch.stack(l2, 1)}


def pick_per_image(n_met_: torch.Tensor, l2: torch.Tensor) -> torch.Tensor:
    """Index ``(n,)`` of each image's best ``ε``: most constraints met, ties -> smaller L2, then the
    smaller ``ε`` (mlnb's per-image search)."""
    top = n_met_ == n_met_.amax(1, keepdim=True)
    return torch.where(top, l2, torch.inf).argmin(1)  # the first (smallest ε) of equal L2


def pick_scenario(n_met_: torch.Tensor, n_constraints: torch.Tensor) -> int:
    """Index of the one ``ε`` for a whole scenario (the paper's reading of Sec. IV-C): most images
    with every constraint met, then most constraints met in total, then the smaller ``ε``."""
    full = (n_met_ == n_constraints[:, None]).sum(0)
    total = n_met_.sum(0)
    # lexicographic (full, total): among the ε with the most fully met images, the most constraints met;
    # argmax returns the first maximum, the smaller ε of the ascending grid
    return int(torch.where(full == full.max(), total, -1).argmax())
