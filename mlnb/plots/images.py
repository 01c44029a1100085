"""Figures of a few attacked images: label probabilities before / after, the adversarial images and
their magnified perturbations (Sec. IV-H1), for the attack notebooks 02-05, the case study (Fig. 2)
and the explorer.

Each function takes plain tensors and returns the matplotlib ``Figure``.

Introduced in notebooks/02_baselines_fgs_fg.ipynb.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from ..metrics import rmsd
from ..target import THRESHOLD
from .style import PALETTE, label_bars, magnify, show

_SET_SHADE = {"A": "#fbe3e3", "B": "#ffffff", "C": "#eeeeee"}


def _as_series(scores_adv, name: str = "adversarial") -> dict:
    """A tensor, or a ``{name: tensor}`` mapping, -> an ordered ``{name: tensor}`` dict."""
    if isinstance(scores_adv, dict):
        return dict(scores_adv)
    return {name: scores_adv}


# ----------------------------------------------------------------------------- attack notebooks (02-05)
def label_roles(y, A, B) -> list[list[str]]:
    """Per image, per label: ``"A↓"`` (positive to hide), ``"A↑"`` (negative to show), ``"B"`` or ``"C"``.

    ``y``, ``A``, ``B``: ``(N, L)`` bool. Introduced in notebooks/02_baselines_fgs_fg.ipynb.
    """
    out = []
    for yi, ai, bi in zip(y.tolist(), A.tolist(), B.tolist()):
        out.append([("A↓" if p else "A↑") if a else "B" if b else "C" for p, a, b in zip(yi, ai, bi)])
    return out


def plot_scores_before_after(scores_clean, scores_adv, label_names, A, B, *, y=None, titles=None,
                             max_images: int = 4, threshold: float = THRESHOLD, ncols: int = 2):
    """Label probabilities of the clean image and after each attack, one panel per image.

    ``scores_clean`` ``(N, L)`` probabilities; ``scores_adv`` ``(N, L)`` or ``{attack: (N, L)}``;
    ``A``, ``B`` ``(N, L)`` bool (``A`` shaded red, ``C`` grey); ``y`` ``(N, L)`` bool clean labels
    (optional: tick labels then say ``A↓`` for a label to hide and ``A↑`` for one to show). The
    classification threshold is the dashed line. Returns the matplotlib ``Figure``.

    Introduced in notebooks/02_baselines_fgs_fg.ipynb.
    """
    import matplotlib.pyplot as plt

    series = {"clean": scores_clean, **_as_series(scores_adv)}
    n = min(int(scores_clean.shape[0]), max_images)
    L = len(label_names)
    roles = label_roles(y if y is not None else A & False, A, B)
    cols = min(ncols, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(0.55 * L * cols + 1.5, 2.8 * rows), squeeze=False)
    for i in range(rows * cols):
        ax = axes[i // cols][i % cols]
        if i >= n:
            ax.set_visible(False)
            continue
        for j, role in enumerate(roles[i]):
            ax.axvspan(j - 0.5, j + 0.5, color=_SET_SHADE[role[0]], zorder=0)
        label_bars(ax, label_names, {name: s[i] for name, s in series.items()}, [r[0] for r in roles[i]],
                   threshold, marks=roles[i] if y is not None else [r[0] for r in roles[i]],
                   colours={"clean": PALETTE["before"]}, fontsize=7, zorder=2, legend=i == 0)
        ax.set_xlim(-0.5, L - 0.5)
        ax.set_ylabel("probability", fontsize=8)
        if titles is not None:
            ax.set_title(titles[i], fontsize=9)
    fig.tight_layout()
    return fig


def plot_perturbations(x, x_adv, *, titles=None, max_images: int = 4, size: float = 1.7):
    """Clean image, adversarial image and the magnified perturbation ``|r| · 255 / max|r|``
    (Sec. IV-H1) for each attack; one row per image. ``x`` ``(N, C, H, W)`` in ``[0, 1]``;
    ``x_adv`` ``(N, C, H, W)`` or ``{attack: (N, C, H, W)}``. Column titles give each image's RMSD
    (0-255 scale). A zero perturbation is drawn black. Returns the matplotlib ``Figure``.

    Introduced in notebooks/02_baselines_fgs_fg.ipynb.
    """
    import matplotlib.pyplot as plt

    advs = _as_series(x_adv)
    n = min(int(x.shape[0]), max_images)
    cols = 1 + 2 * len(advs)
    fig, axes = plt.subplots(n, cols, figsize=(size * cols, size * n + 0.3), squeeze=False)
    for i in range(n):
        show(axes[i][0], x[i], (titles[i] if titles is not None else "clean"))
        for k, (name, xa) in enumerate(advs.items()):
            d = float(rmsd(x[i:i + 1], xa[i:i + 1])[0])
            show(axes[i][1 + 2 * k], xa[i], f"{name} (RMSD {d:.2f})")
            show(axes[i][2 + 2 * k], magnify(xa[i] - x[i]), f"{name}: |r|·255/max|r|")
    fig.tight_layout()
    return fig


def show_images(images, titles=None, *, ncols: int = 8, size: float = 1.5):
    """A grid of ``(N, C, H, W)`` images in ``[0, 1]`` with optional titles. Returns the ``Figure``.

    Introduced in notebooks/02_baselines_fgs_fg.ipynb.
    """
    import matplotlib.pyplot as plt

    n = int(images.shape[0])
    cols = max(1, min(ncols, n))
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows + 0.2), squeeze=False)
    for i in range(rows * cols):
        ax = axes[i // cols][i % cols]
        if i < n:
            show(ax, images[i], titles[i] if titles is not None else "")
        else:
            ax.axis("off")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- case study (08), explorer (10)
def case_study(x: torch.Tensor, x_advs: Mapping[str, torch.Tensor], before: torch.Tensor,
               afters: Mapping[str, torch.Tensor], label_names: Sequence[str], roles: Sequence[str],
               title: str = ""):
    """Fig. 2: the original image; the chosen labels' probabilities before and after each attack;
    each adversarial image; each magnified perturbation ``|r| · 255 / max|r|``.

    ``x``: ``(C, H, W)``; ``x_advs``: ``{attack: (C, H, W)}``; ``before``: ``(K,)`` probabilities of
    the ``K`` chosen labels; ``afters``: ``{attack: (K,)}``; ``label_names``, ``roles``: ``K`` names
    and their sets (``"A"`` / ``"B"``).

    Introduced in notebooks/08_case_study.ipynb.
    """
    import matplotlib.pyplot as plt

    attacks = list(x_advs)
    n = len(attacks)
    fig = plt.figure(figsize=(11, 2.6 * max(n, 1)))
    grid = fig.add_gridspec(n, 4, width_ratios=[1.1, 1.6, 1, 1])
    show(fig.add_subplot(grid[:, 0]), x, "original")
    label_bars(fig.add_subplot(grid[:, 1]), label_names, {"before": before, **afters}, roles)
    for i, name in enumerate(attacks):
        show(fig.add_subplot(grid[i, 2]), x_advs[name], f"adversarial: {name}")
        show(fig.add_subplot(grid[i, 3]), magnify(x_advs[name] - x), f"|r|·255/max|r|: {name}")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def explorer_view(x: torch.Tensor, x_adv: torch.Tensor | None, label_names: Sequence[str],
                  before: torch.Tensor, after: torch.Tensor | None, roles: Sequence[str], title: str = "",
                  fig=None):
    """The explorer's panel: every label's probability before / after (tick labels coloured by set:
    A red, B blue, C grey), the image, the adversarial image and the magnified perturbation.
    ``x``, ``x_adv``: ``(C, H, W)``; ``before``, ``after``: ``(L,)``. ``fig``: a
    ``matplotlib.figure.Figure`` to draw into (set to 12 x 3.2 inches), e.g. one not registered
    with pyplot for a widget callback (which JupyterLab may run in a thread of its own); default a
    new pyplot figure.

    Drawn by :func:`mlnb.explorer.render`, which notebooks/10_explorer.ipynb calls.
    """
    if fig is None:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=(12, 3.2))
    else:
        fig.set_size_inches(12, 3.2)
    grid = fig.add_gridspec(1, 4, width_ratios=[2.6, 1, 1, 1])
    series = {"before": before} if after is None else {"before": before, "after": after}
    label_bars(fig.add_subplot(grid[0, 0]), label_names, series, roles)
    show(fig.add_subplot(grid[0, 1]), x, "image")
    if x_adv is not None:
        show(fig.add_subplot(grid[0, 2]), x_adv, "adversarial")
        show(fig.add_subplot(grid[0, 3]), magnify(x_adv - x), "|r|·255/max|r|")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
