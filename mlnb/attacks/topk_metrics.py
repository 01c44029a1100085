"""Top-k success and the top-k metrics of TkML-AP (Hu et al., ICCV 2021), on logits.

A top-k classifier predicts the ``k`` labels of largest score. Its attacks succeed by a **different
definition** from :meth:`mlnb.target.Target.met` (which reads every label against the 0.5 threshold):
they ask where labels rank, not which side of 0.5 they fall. The definition lives here, once:

* label ``j`` is **in the top k** of an image when fewer than ``k`` labels score strictly higher
  (``#{i : g_i > g_j} < k``; a tie at the k-th place puts every tied label in, so a tie never reads as
  a success of an untargeted attack);
* **untargeted** success (TkML-AP-U, TkML-AP-Uv): no label of ``y`` is in the top k;
* **targeted** success (TkML-AP-T): every label of ``targets`` is in the top k.

:func:`topk_margin` says by how much the goal holds (the margin ``κ`` of the attacks' hinge). The public
functions check their arguments; the private ``_in_topk``, ``_success``, ``_margin`` and ``_reached`` are
the unchecked forms the attacks call inside their loops.

Introduced in notebooks/13_successors.ipynb.
"""
from __future__ import annotations

import torch

from .. import validate as V

REPORT_KS = (1, 2, 3, 5)  # the paper reports k = 1, 2, 3, 4, 5, 10 on 20 (VOC) or 80 (COCO) labels


def _check_scores(logits, y, k, targets=None) -> None:
    """The arguments of the functions here: ``logits`` a finite ``(N, L)`` tensor; ``y`` (None for
    :func:`in_topk`) and ``targets`` ``(N, L)`` bool with the rows and labels of ``logits``; ``k`` an int in
    ``[1, L]``."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a 2-D tensor (N, L) of label scores, got {got}: pass one row per "
                         "image (logits.unsqueeze(0) for a single image)")
    V.check_finite(logits, "logits")
    n_labels = int(logits.shape[1])
    for name, mask in (("y", y), ("targets", targets)):
        if mask is not None:
            V.check_label_matrix(mask, name, n_labels)
            V.check_same_rows(logits=logits, **{name: mask})
    V.check_int_range("k", k, 1, n_labels)


def _in_topk(logits: torch.Tensor, k: int) -> torch.Tensor:
    higher = (logits[:, None, :] > logits[:, :, None]).sum(2)
    return higher < k


def _success(logits: torch.Tensor, y: torch.Tensor, k: int, targets: torch.Tensor | None) -> torch.Tensor:
    top = _in_topk(logits, k)
    if targets is None:
        return ~(top & y).any(1)
    return ~(targets & ~top).any(1)


def kth_other(logits: torch.Tensor, y: torch.Tensor, k: int, targets: torch.Tensor | None) -> torch.Tensor:
    """``(N, 1)``: the logit the goal compares against, the one place it is computed (the hinge and the margin).
    Untargeted: ``v_[k]``, the k-th largest logit outside ``y``; targeted: ``h_[k-|T|+1]``, the
    ``(k - |T| + 1)``-th largest logit outside ``targets``."""
    if targets is None:
        return torch.where(y, -torch.inf, logits).topk(k, dim=1).values[:, -1:]
    others = torch.where(targets, -torch.inf, logits).sort(dim=1, descending=True).values
    return others.gather(1, (k - targets.sum(1, keepdim=True)).clamp(min=0))


def _margin(logits: torch.Tensor, y: torch.Tensor, k: int, targets: torch.Tensor | None) -> torch.Tensor:
    ref = kth_other(logits, y, k, targets)
    if targets is None:
        return torch.where(y, ref - logits, torch.inf).amin(1)
    return torch.where(targets, logits - ref, torch.inf).amin(1)


def _reached(logits: torch.Tensor, y: torch.Tensor, k: int, targets: torch.Tensor | None,
            kappa: float) -> torch.Tensor:
    """``(N,)`` bool, the attacks' stopping rule (unchecked): :func:`topk_success` and, for ``kappa > 0``,
    :func:`topk_margin` ``>= kappa`` (the hinge :func:`~mlnb.attacks.topk.topk_hinge` is 0); ``kappa=0``:
    plain :func:`topk_success`."""
    ok = _success(logits, y, k, targets)
    return ok if kappa == 0 else ok & (_margin(logits, y, k, targets) >= kappa)


def in_topk(logits: torch.Tensor, k: int) -> torch.Tensor:
    """``(N, L)`` bool: label ``j`` is in the top ``k`` of its row (fewer than ``k`` labels score strictly
    higher; ties at the k-th place are all in). ``logits`` ``(N, L)``; ``k`` in ``[1, L]``.

    Introduced in notebooks/13_successors.ipynb."""
    _check_scores(logits, None, k)
    return _in_topk(logits, k)


def topk_success(logits: torch.Tensor, y: torch.Tensor, k: int, targets: torch.Tensor | None = None) -> torch.Tensor:
    """``(N,)`` bool, the one definition of top-k success (module docstring). ``targets`` None:
    untargeted, no label of ``y`` ``(N, L)`` bool in the top ``k``; else targeted, every label of
    ``targets`` ``(N, L)`` bool in the top ``k`` (``y`` is then only checked). ``k`` in ``[1, L]``.

    Introduced in notebooks/13_successors.ipynb."""
    _check_scores(logits, y, k, targets)
    return _success(logits, y, k, targets)


def topk_margin(logits: torch.Tensor, y: torch.Tensor, k: int, targets: torch.Tensor | None = None) -> torch.Tensor:
    """``(N,)`` float: by how much the top-k goal holds, the largest ``κ`` at which
    :func:`~mlnb.attacks.topk.topk_hinge` is 0. Untargeted: ``min_{j∈Y} (v_[k] - g_j)``, ``v_[k]`` the k-th
    largest logit outside ``y``; targeted: ``min_{t∈T} (g_t - h_[k-|T|+1])``, ``h_[m]`` the m-th largest
    logit outside ``targets``. Negative where the goal fails; ``+inf`` for an empty ``y`` (``targets``).
    Arguments as in :func:`topk_success`.

    Introduced in notebooks/13_successors.ipynb (through the attacks)."""
    _check_scores(logits, y, k, targets)
    return _margin(logits, y, k, targets)


def topk_report(logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor, x_adv: torch.Tensor, *,
                ks=None, targets: torch.Tensor | None = None) -> dict:
    """The metrics TkML-AP reports, as plain floats: ``success@k``, the fraction of images whose
    :func:`topk_success` holds at each ``k`` of ``ks`` (an example made for one ``k`` read at several),
    ``l2@k``, the mean L2 of the perturbation over those successful images (NaN where none), and ``l2``,
    ``linf``, the mean norms over every image. ``logits`` ``(N, L)`` at ``x_adv``; ``x``, ``x_adv``
    ``(N, C, H, W)`` of one shape; ``y``, ``targets`` as in :func:`topk_success`. ``ks``: ints in
    ``[1, L]``; None (default): the ``k`` of :data:`REPORT_KS` up to ``L``.

    Introduced in notebooks/13_successors.ipynb."""
    _check_scores(logits, y, 1, targets)
    n_labels = int(logits.shape[1])
    if ks is None:
        ks = tuple(k for k in REPORT_KS if k <= n_labels)
    if not isinstance(ks, (tuple, list, range)) or len(ks) == 0:
        raise TypeError(f"ks must be a non-empty tuple of ints, got {ks!r}: pass e.g. ks=(1, {min(3, n_labels)}) "
                        "or leave ks out")
    for i, k in enumerate(ks):
        V.check_int_range(f"ks[{i}]", k, 1, n_labels)
    V.check_images(x, "x")
    V.check_images(x_adv, "x_adv")
    if x_adv.shape != x.shape:
        raise ValueError(f"x_adv has shape {tuple(x_adv.shape)} but x has {tuple(x.shape)}: pass the adversarial "
                         "images of x, one per clean image, in x's shape")
    V.check_same_rows(logits=logits, y=y, x=x, x_adv=x_adv)
    eta = (x_adv - x).flatten(1)
    l2, linf = eta.norm(dim=1), eta.abs().amax(dim=1)
    out = {"l2": float(l2.mean()), "linf": float(linf.mean())}
    for k in ks:
        ok = _success(logits, y, k, targets)
        out[f"success@{k}"] = float(ok.float().mean())
        out[f"l2@{k}"] = float(l2[ok].mean()) if bool(ok.any()) else float("nan")
    return out
