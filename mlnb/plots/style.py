"""What every figure of ``mlnb.plots`` shares: the colours, drawing one image, the magnified
perturbation of Sec. IV-H1 and the grouped bars of label probabilities.

Nothing here computes an attack or a metric; figures are returned, never shown or saved (save them
with ``mlnb.utils.save_figure``).

Introduced in notebooks/02_baselines_fgs_fg.ipynb.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from ..target import THRESHOLD

PALETTE = {"before": "#8c8c8c", "ml_cw": "#1f77b4", "rank2": "#d62728", "original": "#4d4d4d",
           "png": "#ff7f0e", "jpeg": "#2ca02c", "after": "#9467bd"}
ROLE_COLOURS = {"A": "#d62728", "B": "#1f77b4", "C": "#bbbbbb"}


def magnify(r: torch.Tensor) -> torch.Tensor:
    """The paper's magnified perturbation (Sec. IV-H1): ``|r| · 255 / max|r|`` per image, returned on
    the ``[0, 1]`` scale (``|r| / max|r|``). ``r``: ``(N, C, H, W)`` or ``(C, H, W)``; a zero
    perturbation stays zero.

    Introduced in notebooks/08_case_study.ipynb.
    """
    single = r.dim() == 3
    r = r.unsqueeze(0) if single else r
    a = r.detach().abs()
    peak = a.flatten(1).amax(1).clamp(min=1e-12).view(-1, 1, 1, 1)
    out = a / peak
    return out[0] if single else out


def as_image(img: torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` tensor in ``[0, 1]`` -> an ``imshow``-ready array (``(H, W)`` grey or ``(H, W, 3)``).

    Used by :func:`show`; no notebook calls it directly.
    """
    a = img.detach().float().cpu().clamp(0, 1)
    return a[0].numpy() if a.shape[0] == 1 else a.permute(1, 2, 0).numpy()


def show(ax, img: torch.Tensor, title: str = "") -> None:
    """Draw one ``(C, H, W)`` image in ``[0, 1]`` without axes.

    Draws every image of ``mlnb.plots``' figures (first in notebooks/02_baselines_fgs_fg.ipynb,
    through ``plot_perturbations``); no notebook calls it directly.
    """
    ax.imshow(as_image(img), cmap="gray" if img.shape[0] == 1 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def label_bars(ax, label_names: Sequence[str], series: Mapping[str, Sequence[float]],
               roles: Sequence[str] | None = None, threshold: float = THRESHOLD, *, marks: Sequence[str] | None = None,
               colours: Mapping[str, str] | None = None, fontsize: float = 8, zorder: float | None = None,
               legend: bool = True) -> None:
    """Grouped bars of label probabilities: one group per label, one bar per series (e.g.
    ``{"before": p, "ml_cw": p1}``, each ``(L,)``), the ``threshold`` dashed.

    ``roles`` (``"A"``, ``"B"`` or ``"C"`` per label) colour the tick labels; ``marks``: the line
    under each label's name (default ``"(role)"`` when ``roles`` is given, else none); ``colours``:
    ``{series: colour}`` over :data:`PALETTE`; ``fontsize``: of the tick labels; ``zorder``: the
    bars' (the threshold is drawn one above), to draw over a shaded background; ``legend``: draw
    the series' legend (upper right).

    Draws the bars of ``case_study``, ``explorer_view`` and ``plot_scores_before_after`` (first in
    notebooks/02_baselines_fgs_fg.ipynb); no notebook calls it directly.
    """
    k = len(series)
    width = 0.8 / max(k, 1)
    pos = np.arange(len(label_names))
    palette = {**PALETTE, **(colours or {})}
    for i, (name, values) in enumerate(series.items()):
        vals = np.asarray(torch.as_tensor(values).detach().float().cpu())
        ax.bar(pos + (i - (k - 1) / 2) * width, vals, width, label=name, color=palette.get(name), zorder=zorder)
    ax.axhline(threshold, ls="--", lw=1, color="k", zorder=None if zorder is None else zorder + 1)
    ax.set_xticks(pos)
    if marks is None and roles is not None:
        marks = [f"({r})" for r in roles]
    ticks = list(label_names) if marks is None else [f"{n}\n{m}" for n, m in zip(label_names, marks)]
    ax.set_xticklabels(ticks, fontsize=fontsize, rotation=0 if len(label_names) <= 6 else 60)
    if roles is not None:
        for tick, role in zip(ax.get_xticklabels(), roles):
            tick.set_color(ROLE_COLOURS.get(role, "k"))
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("probability")
    if legend:
        ax.legend(fontsize=7, loc="upper right")
