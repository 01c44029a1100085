"""FGS and FG (Sec. IV-C): the public attacks and their kernels: one gradient of the per-label sigmoid
loss, many ε, and the two ways of choosing ε: per image (mlnb) or one per scenario (the paper).

Introduced in notebooks/02_baselines_fgs_fg.ipynb.
"""
from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F

from .. import validate as V
from ..target import Target
from ._core import AttackResult, Runtime, finalize, progress_bar, run_in_chunks, setup


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


def grid_scores(rt: Runtime, x: torch.Tensor, goal: Target, eps_grid: torch.Tensor, norm: str) -> dict:
    """One gradient per image, then ``clip(x - ε d)`` scored for every ``ε`` of ``eps_grid`` ``(G,)``.

    Returns ``d`` ``(n, C, H, W)`` (the unit step of :func:`direction`), ``n_met`` ``(n, G)`` int64
    (constraints of Eq. 4 met, decided on logits) and ``l2`` ``(n, G)`` (``||x_adv - x||_2``)."""
    d = direction(target_gradient(rt, x, goal.y_star, goal.constrained), norm)
    n_met_, l2 = [], []
    with torch.no_grad():
        for eps in eps_grid.tolist():
            xa = (x - eps * d).clamp(0, 1)
            n_met_.append(goal.n_satisfied(rt.logits(xa)))
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


@torch.enable_grad()  # also when called under torch.no_grad(): every attack takes gradients
def _one_step_attack(norm, model, x, y, A, B, progress, eps, eps_max, n_eps, batch_size, autocast_dtype,
                     channels_last) -> AttackResult:
    rt, goal = setup(model, x, y, A, B, batch_size=batch_size, autocast_dtype=autocast_dtype,
                     channels_last=channels_last)
    if eps is None or eps == "scenario":
        V.check_positive("eps_max", eps_max)
        V.check_int("n_eps", n_eps, 2)
        grid = torch.linspace(0, float(eps_max), int(n_eps))
        if eps == "scenario":
            grid = grid[1:]  # one ε > 0 for every image: no clean-image fallback
    elif isinstance(eps, numbers.Real) and not isinstance(eps, bool):  # a NumPy number: check_positive says how
        V.check_positive("eps", eps)
        grid = torch.tensor([float(eps)])
    else:
        raise ValueError(f"eps must be None (search ε per image), a number > 0 (one fixed ε) or 'scenario' "
                         f"(one ε for all images of the call, chosen on them), got {eps!r}")
    bar = progress_bar(x.shape[0] * len(grid), progress, "fgs" if norm == "linf" else "fg")
    with bar:
        def chunk(sl):
            r = grid_scores(rt, x[sl], goal[sl], grid, norm)
            bar.update(r["d"].shape[0] * len(grid))
            return r
        r = run_in_chunks(x.shape[0], batch_size, x.device, chunk)
    if eps is None:
        pick = pick_per_image(r["n_met"], r["l2"])
    else:
        pick = torch.full((x.shape[0],), pick_scenario(r["n_met"], goal.n_constraints), dtype=torch.int64, device=x.device)
    chosen = grid.to(x.device)[pick]
    x_adv = (x - chosen.view(-1, 1, 1, 1) * r["d"]).clamp(0, 1)
    curve = {"eps_grid": grid.to(x.device), "success_by_eps": (r["n_met"] == goal.n_constraints[:, None]).float().mean(0)}
    return finalize(rt, x, x_adv, goal, (chosen > 0).long(), chosen, curve)


_EPS_DOC = """ε, three ways (``eps``):

    * ``eps=None`` (default, mlnb's form): searched *per image* over ``linspace(0, eps_max, n_eps)``;
      the best ε meets the most constraints of Eq. (4), ties -> smaller L2, then smaller ε. ε = 0 (the
      clean image) is a candidate, so an image the step cannot help is returned clean.
    * ``eps="scenario"`` (the paper's reading of Sec. IV-C, "ε searched in [0, 10]"; its FGS RMSD is
      about ε): *one* ε > 0 for all the images of the call, from ``linspace(0, eps_max, n_eps)[1:]``:
      the most images with every constraint met, then the most constraints met in total, then the
      smaller ε. Results depend on which images are attacked together (the experiment runner passes
      a whole scenario in one call). ``extras["success_by_eps"]`` ``(G,)`` is the success rate per ε.
    * ``eps=<number>``: that ε for every image.
"""


def fgs(model, x, y, A=None, B=None, *, generator=None, progress=True, eps: float | str | None = None,
        eps_max: float = 10 / 255, n_eps: int = 21, batch_size: int | None = None, autocast_dtype=None,
        channels_last: bool = False) -> AttackResult:
    """Targeted multi-label Fast Gradient Sign (Sec. IV-C): ``x* = clip(x - ε sign(∇_x loss))``.

    ``loss`` is the per-label sigmoid (BCE-with-logits) loss towards ``y* = y XOR A`` summed over
    ``A ∪ B``; one gradient per image. The paper searches ε in [0, 10] on the 0-255 scale, so
    ``eps_max = 10/255``. {eps_doc}
    ``param`` is the chosen ε (0 where the clean image was kept); ``iterations`` is 1 (0 there).

    >>> res = fgs(model.eval(), x, y, A, B, eps_max=10 / 255)
    >>> res.success.float().mean()

    Introduced in notebooks/02_baselines_fgs_fg.ipynb.
    """
    return _one_step_attack("linf", model, x, y, A, B, progress, eps, eps_max, n_eps, batch_size,
                            autocast_dtype, channels_last)


def fg(model, x, y, A=None, B=None, *, generator=None, progress=True, eps: float | str | None = None,
       eps_max: float = 10 / 255, n_eps: int = 21, batch_size: int | None = None, autocast_dtype=None,
       channels_last: bool = False) -> AttackResult:
    """Targeted multi-label Fast Gradient (Sec. IV-C): ``x* = clip(x - ε' ∇_x loss / ||∇_x loss||_2)``.

    Same loss as :func:`fgs`. Scale of ε (the paper is ambiguous: its literal ε in [0, 10] on 0-255
    would be an L2 norm of at most 10/255 over a whole 299x299x3 image): here ε is the
    *root-mean-square* step per pixel, ``ε' = ε sqrt(d)`` with ``d = C H W``, so FG's ε, FGS's ε and
    the RMSD metric share one scale and ``eps_max = 10/255`` gives both attacks a comparable budget
    (an FG step of ε has the L2 norm of an FGS step of ε). For the literal reading pass
    ``eps_max = 10 / 255 / sqrt(d)``. {eps_doc}
    >>> res = fg(model.eval(), x, y, A, B)
    >>> res.param  # chosen ε per image

    Introduced in notebooks/02_baselines_fgs_fg.ipynb.
    """
    return _one_step_attack("rms", model, x, y, A, B, progress, eps, eps_max, n_eps, batch_size,
                            autocast_dtype, channels_last)


fgs.__doc__ = fgs.__doc__.replace("{eps_doc}", _EPS_DOC)
fg.__doc__ = fg.__doc__.replace("{eps_doc}", _EPS_DOC)
