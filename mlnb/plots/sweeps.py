"""Curves against a swept parameter: the JPEG quality sweep and the cost-against-protection map of
notebook 09, and the papermill sweeps' one panel per metric.

Each function takes a DataFrame (one row per setting or run) and returns the matplotlib ``Figure``.

Introduced in notebooks/09_jpeg_defense.ipynb.
"""
from __future__ import annotations

import math
from typing import Sequence

import pandas as pd


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
    mean_success = table[list(success_columns)].mean(axis=1)
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


def sweep_plot(table: pd.DataFrame, x: str, metrics: list[str] | None = None, *, hue: str | None = None):
    """One panel per metric: the metric against the swept parameter ``x`` (``hue``: a second parameter).

    ``table``: one row per run (:func:`mlnb.running.sweep.collect`), parameter columns plus numeric metric
    columns. ``metrics``: the columns to plot (default every numeric column that is not ``x`` / ``hue``,
    at most 6). Returns the matplotlib ``Figure``.

    Drawn by :func:`mlnb.running.sweep.run_sweep` into ``sweep.png`` (``make sweep``); no notebook calls it.
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
