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
from ..validate import check_images, check_int
from .style import PALETTE, label_bars, magnify, show

_SET_SHADE = {"A": "#fbe3e3", "B": "#ffffff", "C": "#eeeeee"}


def _as_series(scores_adv, name: str = "adversarial") -> dict:
    """A tensor, or a ``{name: tensor}`` mapping, -> an ordered ``{name: tensor}`` dict."""
    if isinstance(scores_adv, dict):
        return dict(scores_adv)
    return {name: scores_adv}


def _check_shape(name: str, t, ref: str, shape: tuple, fix: str) -> None:
    """``t`` is a tensor of the shape of ``ref`` (``shape``), else ``ValueError`` ending with ``fix``."""
    got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
    if got != tuple(shape):
        raise ValueError(f"{name} has shape {got} but must match {ref}'s {tuple(shape)}: {fix}")


def _check_count(name: str, items, n: int, per: str = "image") -> None:
    """``items`` (titles, label names, roles) holds exactly ``n`` entries, one per ``per``."""
    if items is not None and len(items) != n:
        raise ValueError(f"{name} has {len(items)} entries for {n} {per}s: pass one per {per}")


def _check_nonempty(name: str, mapping, example: str) -> None:
    """``mapping`` (attacks, panels) holds at least one entry; ``example`` shows one."""
    if not mapping:
        raise ValueError(f"{name} is empty: pass at least one entry, e.g. {name}={example}")


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
    (optional: tick labels then say ``A↓`` for a label to hide and ``A↑`` for one to show);
    ``label_names``: ``L`` names; ``titles``: ``N`` panel titles; the first ``max_images`` (>= 1) images
    are drawn. The classification threshold is the dashed line. Returns the matplotlib ``Figure``;
    no image, or names / titles / tensors whose sizes disagree with ``scores_clean``, raise ``ValueError``.

    Introduced in notebooks/02_baselines_fgs_fg.ipynb.
    """
    import matplotlib.pyplot as plt

    check_int("max_images", max_images)
    check_int("ncols", ncols)
    if not isinstance(scores_clean, torch.Tensor) or scores_clean.dim() != 2 or 0 in scores_clean.shape:
        got = tuple(scores_clean.shape) if isinstance(scores_clean, torch.Tensor) else type(scores_clean).__name__
        raise ValueError(f"scores_clean must be a non-empty (N, L) tensor of probabilities, got {got}: "
                         f"pass at least one image's scores")
    N, L = scores_clean.shape
    _check_count("label_names", label_names, L, "label")
    series = {"clean": scores_clean, **_as_series(scores_adv)}
    for name, t in [*series.items(), ("A", A), ("B", B), *([("y", y)] if y is not None else [])]:
        _check_shape(name if name in ("A", "B", "y") else f"scores {name!r}", t, "scores_clean", (N, L),
                     "pass one row per image and one column per label")
    _check_count("titles", titles, N)
    n = min(N, max_images)
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
    ``x_adv`` ``(N, C, H, W)`` or ``{attack: (N, C, H, W)}`` (at least one); ``titles``: ``N``. Column
    titles give each image's RMSD (0-255 scale). A zero perturbation is drawn black. Returns the
    matplotlib ``Figure``; no image, or sizes that disagree with ``x``, raise ``ValueError``.

    Introduced in notebooks/02_baselines_fgs_fg.ipynb.
    """
    import matplotlib.pyplot as plt

    check_images(x, "x")
    check_int("max_images", max_images)
    advs = _as_series(x_adv)
    _check_nonempty("x_adv", advs, "{'attack': x_adv}")
    for name, xa in advs.items():
        _check_shape(f"x_adv {name!r}", xa, "x", tuple(x.shape), "pass one adversarial image per image of x")
    _check_count("titles", titles, int(x.shape[0]))
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
    """A grid of ``(N, C, H, W)`` images in ``[0, 1]`` (``N >= 1``) with optional titles (``N`` of them).
    Returns the ``Figure``.

    Introduced in notebooks/02_baselines_fgs_fg.ipynb.
    """
    import matplotlib.pyplot as plt

    check_images(images, "images")
    check_int("ncols", ncols)
    n = int(images.shape[0])
    _check_count("titles", titles, n)
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
    the ``K`` chosen labels; ``afters``: ``{attack: (K,)}`` (the attacks of ``x_advs``, at least one);
    ``label_names``, ``roles``: ``K`` names and their sets (``"A"`` / ``"B"``). Else ``ValueError``.

    Introduced in notebooks/08_case_study.ipynb.
    """
    import matplotlib.pyplot as plt

    _check_nonempty("x_advs", x_advs, "{'attack': x_adv}")
    if set(afters) != set(x_advs):
        raise ValueError(f"afters has the attacks {sorted(afters)} but x_advs {sorted(x_advs)}: pass one "
                         f"probability vector per adversarial image")
    _check_count("label_names", label_names, len(before), "chosen label")
    _check_count("roles", roles, len(before), "chosen label")
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
