"""The paper's own numbers (Tables III, IV and V of Song et al., ICDM 2018), as data.

Tables IV and V use the runner's layout (:func:`mlnb.experiments.aggregate`): index
``(dataset, strategy, attack)`` and the columns ``RMSD, Hamming(A), Hamming(B), F1, Ranking loss,
mAP, AUC, Kendall tau-b``. The paper's "N.A." (Hamming(B) with ``B = ∅``) is NaN. The label-specified
rows are the paper's "Person" (``reduce``) and "Sheep" (``augment``) on VOC 2007.

Introduced in notebooks/06_general_attacks.ipynb.
"""
from __future__ import annotations

import math

import pandas as pd

from ..metrics import METRIC_COLUMNS
from ..validate import check_choice

NA = math.nan
METRICS = tuple(METRIC_COLUMNS.values())  # the paper's eight metric columns, in its order
INDEX = ("dataset", "strategy", "attack")

# Table III: the attacked model (Inception-v3 retrained with Eq. 12) on clean test images.
TABLE_III = pd.DataFrame(
    {"hamming": [0.0504, 0.0491], "macro_f1": [0.7278, 0.7340], "micro_f1": [0.7182, 0.7252],
     "ranking_loss": [0.0175, 0.0166], "map": [0.9239, 0.9320]},
    index=pd.Index(["voc2007", "voc2012"], name="dataset"))

_IV = {
    ("voc2007", "random"): {
        "fgs": (5.9271, 0.9045, 0.0064, 0.1420, 0.4113, 0.2709, 0.5887, 0.0711),
        "fg": (5.8718, 0.9100, 0.0183, 0.1587, 0.4304, 0.2741, 0.5696, 0.0670),
        "ml_cw": (2.4452, 0.0500, 0.0039, 0.9253, 0.0013, 0.9917, 0.9987, 0.3571),
        "ml_dp": (11.0673, 0.7145, 0.0084, 0.1198, 0.4748, 0.2243, 0.5252, 0.0269),
        "rank1": (3.2108, 0.1900, 0.0417, 0.6610, 0.0087, 0.9308, 0.9913, 0.3520),
        "rank2": (5.2193, 0.0000, 0.0056, 0.9700, 0.0000, 1.0000, 1.0000, 0.3580)},
    ("voc2007", "extreme"): {
        "fgs": (9.8397, 0.9425, NA, 0.0779, 0.9591, 0.7799, 0.0409, -0.4026),
        "fg": (8.1945, 0.9440, NA, 0.0677, 0.9529, 0.7797, 0.0471, -0.3970),
        "ml_cw": (9.1861, 0.5505, NA, 0.5419, 0.1413, 0.9816, 0.8587, 0.3149),
        "ml_dp": (19.2335, 0.9160, NA, 0.0752, 0.8878, 0.7971, 0.1122, -0.3405),
        "rank1": (3.9147, 0.8450, NA, 0.1069, 0.0692, 0.9923, 0.9308, 0.3777),
        "rank2": (6.2860, 0.8760, NA, 0.0458, 0.0675, 0.9924, 0.9325, 0.3793)},
    ("voc2012", "random"): {
        "fgs": (5.9365, 0.9400, 0.0117, 0.1663, 0.4231, 0.2827, 0.5769, 0.0725),
        "fg": (5.8904, 0.8900, 0.0083, 0.1374, 0.4183, 0.2653, 0.5817, 0.0662),
        "ml_cw": (2.3928, 0.0165, 0.0008, 0.9746, 0.0003, 0.9972, 0.9997, 0.3443),
        "ml_dp": (10.2170, 0.8750, 0.0194, 0.1393, 0.4866, 0.2275, 0.5134, 0.0232),
        "rank1": (4.1550, 0.2010, 0.0328, 0.6180, 0.0041, 0.9789, 0.9959, 0.3416),
        "rank2": (5.3902, 0.0090, 0.0020, 0.9741, 0.0001, 0.9993, 0.9999, 0.3445)},
    ("voc2012", "extreme"): {
        "fgs": (9.8387, 0.9420, NA, 0.0881, 0.9427, 0.8548, 0.0573, -0.3046),
        "fg": (8.3135, 0.9460, NA, 0.0765, 0.9383, 0.8562, 0.0617, -0.3023),
        "ml_cw": (9.9749, 0.0520, NA, 0.9684, 0.0120, 0.9993, 0.9880, 0.3383),
        "ml_dp": (20.5351, 0.9120, NA, 0.0943, 0.8648, 0.8784, 0.1352, -0.2477),
        "rank1": (2.8764, 0.8965, NA, 0.0806, 0.0071, 0.9996, 0.9929, 0.3419),
        "rank2": (4.8311, 0.9030, NA, 0.0675, 0.0066, 0.9996, 0.9934, 0.3422)},
}

_V = {
    ("voc2007", "reduce"): {  # "Person", |A| = 1, |B| = 19
        "ml_cw": (1.5735, 0.0700, 0.0032, 0.9300, 0.0005, 0.9950, 0.9995, 0.3195),
        "rank1": (0.1382, 0.9800, 0.0116, 0.6432, 0.0021, 0.9800, 0.9979, 0.3185),
        "rank2": (5.2107, 0.0000, 0.0000, 1.0000, 0.0000, 1.0000, 1.0000, 0.3198)},
    ("voc2007", "augment"): {  # "Sheep", |A| = 1, |B| = 19
        "ml_cw": (1.9293, 0.0800, 0.0032, 0.9690, 0.0008, 0.9942, 0.9992, 0.4613),
        "rank1": (3.0393, 0.8300, 0.0042, 0.7360, 0.0037, 0.9817, 0.9963, 0.4586),
        "rank2": (3.4916, 0.1500, 0.0184, 0.8112, 0.0000, 1.0000, 1.0000, 0.4620)},
}


def _frame(data: dict) -> pd.DataFrame:
    rows = [((d, s, a), vals) for (d, s), attacks in data.items() for a, vals in attacks.items()]
    return pd.DataFrame([v for _, v in rows], columns=list(METRICS),
                        index=pd.MultiIndex.from_tuples([k for k, _ in rows], names=list(INDEX)))


TABLE_IV = _frame(_IV)
TABLE_V = _frame(_V)


def paper_table(number: int, dataset: str | None = None) -> pd.DataFrame:
    """Table ``number`` (3, 4 or 5) of the paper as a DataFrame (a copy), optionally one data set only."""
    tables = {3: TABLE_III, 4: TABLE_IV, 5: TABLE_V}
    if number not in tables:
        raise ValueError(f"unknown table {number!r}: choose one of 3, 4, 5")
    table = tables[number].copy()
    if dataset is not None:
        names = sorted(set(table.index.get_level_values("dataset")))
        if dataset not in names:
            raise ValueError(f"table {number} has no data set {dataset!r}: choose one of {', '.join(names)}")
        # Table III is indexed by data set alone, Tables IV / V by (dataset, strategy, attack)
        table = table.loc[[dataset]] if table.index.nlevels == 1 else table.xs(dataset, level="dataset",
                                                                               drop_level=False)
    return table


def side_by_side(ours: pd.DataFrame, paper: pd.DataFrame, *, paper_dataset: str = "voc2007") -> pd.DataFrame:
    """Our table beside the paper's, row by row (matched on ``(strategy, attack)``).

    ``ours``: :func:`mlnb.experiments.aggregate` output of ONE data set (any name), index
    ``(dataset, strategy, attack)`` or ``(strategy, attack)``; ``paper``: :func:`paper_table`;
    ``paper_dataset``: the paper's data set to compare with. Returns columns ``(metric, "ours" | "paper")``
    and ``ours``' ``(strategy, attack)`` rows; rows absent from the paper get NaN there. ``ours`` holding
    several data sets raises ``ValueError`` (select one first: its rows would share one paper row).
    """
    o = ours
    if "dataset" in ours.index.names:
        names = list(dict.fromkeys(ours.index.get_level_values("dataset")))
        if len(names) > 1:
            raise ValueError(f"ours holds {len(names)} data sets ({', '.join(map(str, names))}) but is compared "
                             f"with one paper data set: select one, e.g. side_by_side(ours.xs({names[-1]!r}, "
                             f"level='dataset', drop_level=False), paper, paper_dataset={names[-1]!r})")
        o = ours.droplevel("dataset")
    missing = [n for n in ("strategy", "attack") if n not in o.index.names or n not in paper.index.names]
    if missing or not set(METRICS) <= set(o.columns):
        raise ValueError(f"side_by_side compares Table IV / V rows: both tables need the index levels (strategy, "
                         f"attack) and ours the columns {list(METRICS)} (missing: levels {missing}, columns "
                         f"{sorted(set(METRICS) - set(o.columns))}); pass paper_table(4) or paper_table(5)")
    p = paper
    if "dataset" in paper.index.names:
        check_choice("paper_dataset", paper_dataset, dict.fromkeys(paper.index.get_level_values("dataset")))
        p = paper.xs(paper_dataset, level="dataset")
    p = p.reindex(o.index)
    if not p.notna().any().any() and len(o):
        raise ValueError("no row of ours matches a row of the paper's table on (strategy, attack): are the levels "
                         "in that order, and is it the table of these rows (Table IV: general and label-specified "
                         "attacks, Table V: the rank attacks' extremes)?")
    out = pd.concat({"ours": o[list(METRICS)], "paper": p[list(METRICS)]}, axis=1)
    out = out.swaplevel(0, 1, axis=1)
    return out[[(c, s) for c in METRICS for s in ("ours", "paper")]]
