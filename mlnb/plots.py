"""Figures used by the notebooks.

Introduced in notebooks/07_label_specified.ipynb.
"""
from __future__ import annotations

import math

import pandas as pd

from .presets import ROW_TITLES

# ----------------------------------------------------------------------------- Fig. 1 and sweeps (experiments)
_STRATEGY_TITLES = {"reduce": "reduce", "augment": "augment"}


def fig1_histograms(records: pd.DataFrame, *, label_names: dict | None = None, threshold: float = 0.5,
                    bins: int = 20, height: float = 2.4):
    """Fig. 1: histograms of the target label's predicted probability for the original (blue) and the
    adversarial (red) images, one panel per strategy (rows) and attack (columns), threshold marked.

    ``records``: :attr:`mlnb.experiments.ExperimentResult.records` with ``strategy``, ``attack``,
    ``label``, ``p_clean``, ``p_adv`` (rows with ``|A| = 1``; others are dropped).
    ``label_names``: optional ``{strategy: title}``. Returns the matplotlib ``Figure``.

    Introduced in notebooks/07_label_specified.ipynb.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    rec = records.dropna(subset=["p_clean", "p_adv"])
    if rec.empty:
        raise ValueError("records hold no single-label target (|A| = 1): run the reduce / augment strategies")
    strategies = list(dict.fromkeys(rec["strategy"]))
    attacks = list(dict.fromkeys(rec["attack"]))
    fig, axes = plt.subplots(len(strategies), len(attacks), figsize=(height * 1.4 * len(attacks), height * len(strategies)),
                             squeeze=False, sharex=True)
    edges = [i / bins for i in range(bins + 1)]
    for i, s in enumerate(strategies):
        for j, a in enumerate(attacks):
            ax = axes[i][j]
            sub = rec[(rec["strategy"] == s) & (rec["attack"] == a)]
            long = pd.DataFrame({"probability": list(sub["p_clean"]) + list(sub["p_adv"]),
                                 "images": ["original"] * len(sub) + ["adversarial"] * len(sub)})
            sns.histplot(long, x="probability", hue="images", bins=edges, ax=ax, element="bars", alpha=0.55,
                         palette={"original": "tab:blue", "adversarial": "tab:red"}, legend=(i == 0 and j == 0))
            ax.axvline(threshold, color="black", linestyle="--", linewidth=1)
            label = sub["label"].iloc[0] if len(sub) and "label" in sub else ""
            title = (label_names or {}).get(s, f"{_STRATEGY_TITLES.get(s, s)} {label}".strip())
            ax.set_title(f"{ROW_TITLES.get(a, a)}: {title}", fontsize=9)
            ax.set_xlim(0, 1)
            ax.set_xlabel(f"P({label})" if i == len(strategies) - 1 else "")
            ax.set_ylabel("images" if j == 0 else "")
    fig.tight_layout()
    return fig


def sweep_plot(table: pd.DataFrame, x: str, metrics: list[str] | None = None, *, hue: str | None = None):
    """One panel per metric: the metric against the swept parameter ``x`` (``hue``: a second parameter).

    ``table``: one row per run (:func:`mlnb.sweep.collect`), parameter columns plus numeric metric
    columns. ``metrics``: the columns to plot (default every numeric column that is not ``x`` / ``hue``,
    at most 6). Returns the matplotlib ``Figure``.

    Drawn by :func:`mlnb.sweep.run_sweep` into ``sweep.png`` (``make sweep``); no notebook calls it.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    if x not in table:
        raise ValueError(f"unknown sweep column {x!r}: choose one of {', '.join(map(str, table.columns))}")
    if metrics is None:
        skip = {x, hue, "run"}
        metrics = [c for c in table.select_dtypes("number").columns if c not in skip][:6]
    if not metrics:
        raise ValueError("no numeric metric to plot: the runs' metrics.json hold no numbers")
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    data = table.sort_values(x, kind="stable")
    for ax, m in zip([a for r in axes for a in r], metrics):
        sns.lineplot(data=data, x=x, y=m, hue=hue, marker="o", ax=ax)
        ax.set_title(m, fontsize=9)
    for ax in [a for r in axes for a in r][len(metrics):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- attack notebooks (02-05)
# Scores before / after an attack, the magnified perturbation of Sec. IV-H1 and a plain image grid.
# Introduced in notebooks/02_baselines_fgs_fg.ipynb (also used by 03, 04 and 05).
_SET_SHADE = {"A": "#fbe3e3", "B": "#ffffff", "C": "#eeeeee"}


def _as_series(scores_adv, name: str = "adversarial") -> dict:
    """A tensor, or a ``{name: tensor}`` mapping, -> an ordered ``{name: tensor}`` dict."""
    if isinstance(scores_adv, dict):
        return dict(scores_adv)
    return {name: scores_adv}


def label_roles(y, A, B) -> list[list[str]]:
    """Per image, per label: ``"A↓"`` (positive to hide), ``"A↑"`` (negative to show), ``"B"`` or ``"C"``.

    ``y``, ``A``, ``B``: ``(N, L)`` bool. Introduced in notebooks/02_baselines_fgs_fg.ipynb.
    """
    out = []
    for yi, ai, bi in zip(y.tolist(), A.tolist(), B.tolist()):
        out.append([("A↓" if p else "A↑") if a else "B" if b else "C" for p, a, b in zip(yi, ai, bi)])
    return out


def plot_scores_before_after(scores_clean, scores_adv, label_names, A, B, *, y=None, titles=None,
                             max_images: int = 4, threshold: float = 0.5, ncols: int = 2):
    """Label probabilities of the clean image and after each attack, one panel per image.

    ``scores_clean`` ``(N, L)`` probabilities; ``scores_adv`` ``(N, L)`` or ``{attack: (N, L)}``;
    ``A``, ``B`` ``(N, L)`` bool (``A`` shaded red, ``C`` grey); ``y`` ``(N, L)`` bool clean labels
    (optional: tick labels then say ``A↓`` for a label to hide and ``A↑`` for one to show). The
    classification threshold is the dashed line. Returns the matplotlib ``Figure``.

    Introduced in notebooks/02_baselines_fgs_fg.ipynb.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    from .figures import PALETTE, ROLE_COLOURS

    series = {"clean": scores_clean, **_as_series(scores_adv)}
    n = min(int(scores_clean.shape[0]), max_images)
    L = len(label_names)
    roles = label_roles(y if y is not None else A & False, A, B)
    cols = min(ncols, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(0.55 * L * cols + 1.5, 2.8 * rows), squeeze=False)
    pos = np.arange(L)
    width = 0.8 / len(series)
    colours = {"clean": PALETTE["before"]}
    for i in range(rows * cols):
        ax = axes[i // cols][i % cols]
        if i >= n:
            ax.set_visible(False)
            continue
        for j, role in enumerate(roles[i]):
            ax.axvspan(j - 0.5, j + 0.5, color=_SET_SHADE[role[0]], zorder=0)
        for k, (name, s) in enumerate(series.items()):
            vals = s[i].detach().float().cpu().numpy()
            ax.bar(pos + (k - (len(series) - 1) / 2) * width, vals, width, label=name,
                   color=colours.get(name, PALETTE.get(name)), zorder=2)
        ax.axhline(threshold, ls="--", lw=1, color="k", zorder=3)
        ax.set_xticks(pos)
        marks = roles[i] if y is not None else [r[0] for r in roles[i]]
        ax.set_xticklabels([f"{nm}\n{r}" for nm, r in zip(label_names, marks)], fontsize=7,
                           rotation=0 if L <= 6 else 60)
        for tick, role in zip(ax.get_xticklabels(), roles[i]):
            tick.set_color(ROLE_COLOURS.get(role[0], "k"))
        ax.set_xlim(-0.5, L - 0.5)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("probability", fontsize=8)
        if titles is not None:
            ax.set_title(titles[i], fontsize=9)
        if i == 0:
            ax.legend(fontsize=7, loc="upper right")
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

    from .figures import magnify, show
    from .metrics import rmsd

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

    from .figures import show

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
