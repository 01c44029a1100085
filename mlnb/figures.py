"""Figures of the case study (Fig. 2), the JPEG defense (Fig. 3 and the quality sweep) and the explorer.

Each function takes plain tensors / numbers / DataFrames, draws with matplotlib and returns the
``Figure``; nothing here computes an attack or a metric (those live in ``mlnb.attacks``,
``mlnb.metrics`` and ``mlnb.defenses``). Save figures with ``mlnb.utils.save_figure``.

Introduced in notebooks/08_case_study.ipynb.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

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

    Introduced in notebooks/08_case_study.ipynb.
    """
    a = img.detach().float().cpu().clamp(0, 1)
    return a[0].numpy() if a.shape[0] == 1 else a.permute(1, 2, 0).numpy()


def show(ax, img: torch.Tensor, title: str = "") -> None:
    """Draw one ``(C, H, W)`` image without axes.

    Introduced in notebooks/08_case_study.ipynb.
    """
    ax.imshow(as_image(img), cmap="gray" if img.shape[0] == 1 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def label_bars(ax, label_names: Sequence[str], series: Mapping[str, Sequence[float]],
               roles: Sequence[str] | None = None, threshold: float = 0.5) -> None:
    """Grouped bars: one group per label, one bar per series (e.g. ``{"before": p, "ml_cw": p1}``),
    the 0.5 threshold dashed; ``roles`` (``"A"``, ``"B"`` or ``"C"`` per label) colour the tick labels.

    Introduced in notebooks/08_case_study.ipynb.
    """
    k = len(series)
    width = 0.8 / max(k, 1)
    pos = np.arange(len(label_names))
    for i, (name, values) in enumerate(series.items()):
        vals = np.asarray(torch.as_tensor(values).detach().float().cpu())
        ax.bar(pos + (i - (k - 1) / 2) * width, vals, width, label=name, color=PALETTE.get(name))
    ax.axhline(threshold, ls="--", lw=1, color="k")
    ax.set_xticks(pos)
    ticks = [f"{n}\n({r})" if roles is not None else n for n, r in zip(label_names, roles or label_names)]
    ax.set_xticklabels(ticks, fontsize=8, rotation=0 if len(label_names) <= 6 else 60)
    if roles is not None:
        for tick, role in zip(ax.get_xticklabels(), roles):
            tick.set_color(ROLE_COLOURS.get(role, "k"))
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("probability")
    ax.legend(fontsize=7, loc="upper right")


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


def defense_histograms(panels: Mapping[str, Mapping[str, torch.Tensor]],
                       overlaps: Mapping[str, Mapping[str, float]] | None = None, bins: int = 20):
    """Fig. 3: one panel per (attack, strategy); in each, histograms of the target label's probability
    for ``{"original": (N,), "png": (N,), "jpeg": (N,)}``, with each one's overlap with the original
    in the legend.

    Introduced in notebooks/09_jpeg_defense.ipynb.
    """
    import matplotlib.pyplot as plt

    n = len(panels)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.8 * rows), squeeze=False)
    edges = np.linspace(0, 1, bins + 1)
    for ax, (title, series) in zip(axes.flat, panels.items()):
        for name, values in series.items():
            vals = np.asarray(torch.as_tensor(values).detach().float().cpu())
            label = name
            if overlaps and name in overlaps.get(title, {}):
                label = f"{name} (overlap {overlaps[title][name]:.2f})"
            ax.hist(vals, bins=edges, histtype="stepfilled", alpha=0.35, color=PALETTE.get(name), label=label)
            ax.hist(vals, bins=edges, histtype="step", color=PALETTE.get(name))
        ax.axvline(0.5, ls="--", lw=1, color="k")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("probability of the target label")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def quality_sweep(table, success_columns: Sequence[str], *, cost_column: str = "clean_map"):
    """The defense trade-off. Left: success rate of each attack after JPEG and clean mAP, against the
    JPEG quality. Right: every defense setting (JPEG, bit depth, median, none) as a point
    (clean mAP, mean success rate): lower-right is better for the defender.

    ``table``: a DataFrame with columns ``defense``, ``param``, ``cost_column`` and ``success_columns``
    (rates in ``[0, 1]``).

    Introduced in notebooks/09_jpeg_defense.ipynb.
    """
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    jp = table[table["defense"] == "jpeg"].sort_values("param")
    for col in success_columns:
        left.plot(jp["param"], jp[col], marker="o", label=f"success: {col}")
    left.plot(jp["param"], jp[cost_column], marker="s", color="k", ls="--", label="clean mAP")
    left.set_xlabel("JPEG quality")
    left.set_ylabel("rate / mAP")
    left.set_ylim(-0.02, 1.02)
    left.legend(fontsize=7)
    left.set_title("JPEG quality sweep", fontsize=10)
    markers = {"none": "*", "png": "*", "jpeg": "o", "bit_depth": "s", "median": "^"}
    mean_success = table[list(success_columns)].mean(1)
    for name, part in table.groupby("defense", sort=False):
        xs, ys = part[cost_column], mean_success[part.index]
        right.plot(xs, ys, marker=markers.get(name, "o"), ls="-" if len(part) > 1 else "", label=name, ms=7)
        for xv, yv, p in zip(xs, ys, part["param"]):
            if name in ("jpeg", "bit_depth", "median"):
                right.annotate(str(int(p)) if float(p).is_integer() else str(p), (xv, yv), fontsize=6,
                               xytext=(2, 2), textcoords="offset points")
    right.set_xlabel("clean mAP after the defense (higher: cheaper)")
    right.set_ylabel("mean attack success after the defense")
    right.set_ylim(-0.02, 1.02)
    right.legend(fontsize=7)
    right.set_title("cost vs protection", fontsize=10)
    fig.tight_layout()
    return fig


def explorer_view(x: torch.Tensor, x_adv: torch.Tensor | None, label_names: Sequence[str],
                  before: torch.Tensor, after: torch.Tensor | None, roles: Sequence[str], title: str = ""):
    """The explorer's panel: every label's probability before / after (tick labels coloured by set:
    A red, B blue, C grey), the image, the adversarial image and the magnified perturbation.
    ``x``, ``x_adv``: ``(C, H, W)``; ``before``, ``after``: ``(L,)``.

    Drawn by :func:`mlnb.explorer.render`, which notebooks/10_explorer.ipynb calls.
    """
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(12, 3.2))
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
