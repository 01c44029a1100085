"""The case-study target of Fig. 2 (Sec. IV-H1): on one image, two labels to flip (``A``: one
positive to remove, one negative to add) and two to keep (``B``: one positive, one negative).

Used by notebooks/08_case_study.ipynb for its images and by the explorer's default selection
(``mlnb.explorer.default_selection``).

Introduced in notebooks/08_case_study.ipynb.
"""
from __future__ import annotations

from typing import Sequence

import torch


def case_study_sets(y_row: torch.Tensor, scores_row: torch.Tensor | None = None, names: Sequence[str] | None = None,
                    prefer_a: Sequence[str] = (), prefer_b: Sequence[str] = ()) -> tuple[list[int], list[int]]:
    """Fig. 2's target for one image: ``A`` = {a positive, a negative}, ``B`` = {another positive,
    another negative}. ``y_row``: ``(L,)`` bool with at least two positives and two negatives.

    The named ``prefer_a`` / ``prefer_b`` are used when all exist and match (one positive and one
    negative each, no label in both; the paper: A = {person, cow}, B = {bottle, sofa}). Otherwise, by clean score
    ``scores_row`` ``(L,)`` (or the index order): A takes the most confident positive and the most
    probable negative, B the next ones.

    Introduced in notebooks/08_case_study.ipynb.
    """
    if y_row.dim() != 1 or y_row.dtype != torch.bool:
        raise ValueError(f"y_row must be a 1-D bool tensor (L,), got {tuple(y_row.shape)} {y_row.dtype}")
    if scores_row is not None and not (isinstance(scores_row, torch.Tensor) and scores_row.shape == y_row.shape
                                       and scores_row.is_floating_point() and bool(scores_row.isfinite().all())):
        raise ValueError(f"scores_row must be a finite float tensor of y_row's shape {tuple(y_row.shape)} (one clean "
                         f"score per label), got {getattr(scores_row, 'dtype', type(scores_row).__name__)} of shape "
                         f"{tuple(getattr(scores_row, 'shape', ()))}: pass e.g. scores[i] for image i")
    pos = y_row.nonzero().flatten().tolist()
    neg = (~y_row).nonzero().flatten().tolist()
    if len(pos) < 2 or len(neg) < 2:
        raise ValueError(f"the case study needs an image with >= 2 positive and >= 2 negative labels, "
                         f"got {len(pos)} positive and {len(neg)} negative: pick another image")
    if names is not None and prefer_a and prefer_b and set(prefer_a) | set(prefer_b) <= set(names):
        a = [list(names).index(n) for n in prefer_a]
        b = [list(names).index(n) for n in prefer_b]
        if set(a).isdisjoint(b) and all(len(s) == 2 and sum(bool(y_row[j]) for j in s) == 1 for s in (a, b)):
            return a, b
    s = scores_row if scores_row is not None else -torch.arange(len(y_row), dtype=torch.float)
    pos.sort(key=lambda j: -float(s[j]))
    neg.sort(key=lambda j: -float(s[j]))
    return [pos[0], neg[0]], [pos[1], neg[1]]
