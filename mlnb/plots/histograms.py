"""Histograms of the target label's probability over many images: Fig. 1 (original against
adversarial, per strategy and attack) and Fig. 3 (original, adversarial PNG and its JPEG, with
their overlaps).

Each function takes plain tensors / DataFrames and returns the matplotlib ``Figure``; the overlaps
are computed by ``mlnb.defenses.histogram_overlap``.

Introduced in notebooks/07_label_specified.ipynb.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
import torch

from ..presets import ROW_TITLES
from ..target import THRESHOLD
from ..validate import check_int_range
from .style import PALETTE

_STRATEGY_TITLES = {"reduce": "reduce", "augment": "augment"}


def fig1_histograms(records: pd.DataFrame, *, label_names: dict | None = None, threshold: float = THRESHOLD,
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


def defense_histograms(panels: Mapping[str, Mapping[str, torch.Tensor]],
                       overlaps: Mapping[str, Mapping[str, float]] | None = None, bins: int = 20):
    """Fig. 3: one panel per (attack, strategy); in each, histograms of the target label's probability
    for ``{"original": (N,), "png": (N,), "jpeg": (N,)}``, with each one's overlap with the original
    in the legend. ``panels`` ``{title: {series: (N,) probabilities}}`` needs at least one panel
    (else ``ValueError``); ``overlaps`` ``{title: {series: overlap}}`` is optional.

    Introduced in notebooks/09_jpeg_defense.ipynb.
    """
    import matplotlib.pyplot as plt

    if not panels:
        raise ValueError("panels is empty: pass at least one panel, e.g. "
                         "{'ml_cw reduce': {'original': p, 'png': p_png, 'jpeg': p_jpeg}}")
    check_int_range("bins", bins, 1, 1000)
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
        ax.axvline(THRESHOLD, ls="--", lw=1, color="k")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("probability of the target label")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    return fig
