"""Figures used by the notebooks.

Introduced in notebooks/07_label_specified.ipynb.
"""
from __future__ import annotations

import math

import pandas as pd

# ----------------------------------------------------------------------------- Fig. 1 and sweeps (experiments)
_STRATEGY_TITLES = {"reduce": "reduce", "augment": "augment"}
_ATTACK_TITLES = {"fgs": "FGS", "fg": "FG", "ml_cw": "ML-CW", "ml_dp": "ML-DP", "rank1": "Rank I", "rank2": "Rank II"}


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
            ax.set_title(f"{_ATTACK_TITLES.get(a, a)}: {title}", fontsize=9)
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

    Introduced in notebooks/06_general_attacks.ipynb.
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
