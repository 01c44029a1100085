"""Top-k success and the top-k metrics of TkML-AP (Hu et al., ICCV 2021), on logits.

A top-k classifier predicts the ``k`` labels of largest score. Its attacks succeed by a **different
definition** from :meth:`mlnb.target.Target.met` (which reads every label against the 0.5 threshold):
they ask where labels rank, not which side of 0.5 they fall. The definition lives here, once:

* label ``j`` is **in the top k** of an image when fewer than ``k`` labels score strictly higher
  (``#{i : g_i > g_j} < k``; a tie at the k-th place puts every tied label in, so a tie never reads as
  a success of an untargeted attack);
* **untargeted** success (TkML-AP-U, TkML-AP-Uv): no label of ``y`` is in the top k;
* **targeted** success (TkML-AP-T): every label of ``targets`` is in the top k.

Introduced in notebooks/13_successors.ipynb.
"""
from __future__ import annotations

import torch

from .. import validate as V

REPORT_KS = (1, 2, 3, 5)  # the paper reports k = 1, 2, 3, 4, 5, 10 on 20 (VOC) or 80 (COCO) labels


def in_topk(logits: torch.Tensor, k: int) -> torch.Tensor:
    """``(N, L)`` bool: label ``j`` is in the top ``k`` of its row (fewer than ``k`` labels score strictly
    higher; ties at the k-th place are all in). ``logits`` ``(N, L)``.

    Introduced in notebooks/13_successors.ipynb."""
    higher = (logits[:, None, :] > logits[:, :, None]).sum(2)
    return higher < k


def topk_success(logits: torch.Tensor, y: torch.Tensor, k: int, targets: torch.Tensor | None = None) -> torch.Tensor:
    """``(N,)`` bool, the one definition of top-k success (module docstring). ``targets`` None:
    untargeted, no label of ``y`` ``(N, L)`` bool in the top ``k``; else targeted, every label of
    ``targets`` ``(N, L)`` bool in the top ``k`` (``y`` is then unused).

    Introduced in notebooks/13_successors.ipynb."""
    top = in_topk(logits, k)
    if targets is None:
        return ~(top & y).any(1)
    return ~(targets & ~top).any(1)


def topk_report(logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor, x_adv: torch.Tensor, *,
                ks=REPORT_KS, targets: torch.Tensor | None = None) -> dict:
    """The metrics TkML-AP reports, as plain floats: ``success@k``, the fraction of images whose
    :func:`topk_success` holds at each ``k`` of ``ks`` (an example made for one ``k`` read at several),
    ``l2@k``, the mean L2 of the perturbation over those successful images (NaN where none), and ``l2``,
    ``linf``, the mean norms over every image. ``logits`` ``(N, L)`` at ``x_adv``; ``x``, ``x_adv``
    ``(N, C, H, W)``; ``y``, ``targets`` as in :func:`topk_success`.

    Introduced in notebooks/13_successors.ipynb."""
    V.check_same_rows(logits=logits, y=y, x=x, x_adv=x_adv)
    eta = (x_adv - x).flatten(1)
    l2, linf = eta.norm(dim=1), eta.abs().amax(dim=1)
    out = {"l2": float(l2.mean()), "linf": float(linf.mean())}
    for k in ks:
        V.check_int_range("k", k, 1, int(logits.shape[1]))
        ok = topk_success(logits, y, k, targets)
        out[f"success@{k}"] = float(ok.float().mean())
        out[f"l2@{k}"] = float(l2[ok].mean()) if bool(ok.any()) else float("nan")
    return out
