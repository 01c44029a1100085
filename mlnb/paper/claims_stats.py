"""Statistics behind :mod:`mlnb.paper.claims`: paired bootstrap over images and the four-state decision.

* :class:`Est`: a quantity measured on the full sample (``point``) with its bootstrap ``draws``; a
  difference, ratio or average of :class:`Est` built from the *same* resamples is a paired statistic.
  The paper's tables have no per-image records: there ``draws`` is the point alone and the
  "interval" is the point, so the decisions are point decisions (never ``"undecided"``).
* :func:`resample_weights`: ``(n_boot, n)`` counts of each image in each resample (indices drawn with
  replacement, a seeded :class:`numpy.random.Generator`); ``W @ X / n`` is every resample's mean.
* :class:`ClaimData`: the per-image values of one data set, paired across attacks (or a table's means);
  :func:`margin` and :func:`overlap` are the Fig. 1 quantities.
* :func:`decide`: compares a 95% percentile interval with a boundary; :func:`conjunction` combines.

Introduced in notebooks/06_general_attacks.ipynb.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..presets import ATTACK_NAMES
from ..metrics import METRIC_COLUMNS  # records key -> table column
from ..validate import check_choice, check_int, check_seed

TOL = 5e-5  # half a unit of the paper's 4th decimal: a smaller difference is a tie
N_BOOT = 2000
LEVEL = 0.95
STATES = ("holds", "does not hold", "undecided", "not testable")


class NotTestable(Exception):
    """The claim cannot be decided on this data; ``str(err)`` is the reason, ``measured`` what was seen."""

    def __init__(self, reason: str, measured: str = "not measured"):
        super().__init__(reason)
        self.measured = measured


@dataclass(frozen=True)
class Est:
    """``point``: the statistic on the full sample; ``draws``: on each resample (length 1 for a table)."""

    point: float
    draws: np.ndarray

    @property
    def is_point(self) -> bool:
        return len(self.draws) == 1

    def ci(self, level: float = LEVEL) -> tuple[float, float]:
        """Percentile interval of the draws (the point itself for a table)."""
        if self.is_point:
            return self.point, self.point
        q = 50 * (1 - level)
        lo, hi = np.percentile(self.draws, [q, 100 - q])
        return float(lo), float(hi)

    def text(self) -> str:
        if self.is_point:
            return f"{self.point:.4f}"
        lo, hi = self.ci()
        return f"{self.point:.4f} [{lo:.4f}, {hi:.4f}]"

    def __sub__(self, other: "Est") -> "Est":
        return Est(self.point - other.point, self.draws - other.draws)

    def __add__(self, other: "Est") -> "Est":
        return Est(self.point + other.point, self.draws + other.draws)

    def __truediv__(self, other: "Est") -> "Est":
        tiny = 1e-12
        return Est(self.point / max(other.point, tiny), self.draws / np.maximum(other.draws, tiny))

    def scale(self, c: float) -> "Est":
        return Est(self.point * c, self.draws * c)


def point(value: float) -> Est:
    """A table value: no resampling, its interval is itself."""
    return Est(float(value), np.array([float(value)]))


def resample_weights(n: int, *, key: str, seed: int = 0, n_boot: int = N_BOOT) -> np.ndarray:
    """``(n_boot, n)`` int counts: how often each of ``n`` images is drawn in each resample.

    The generator is seeded by ``(seed, crc32(key))``, so a claim's interval does not depend on which
    claims ran before it, and comparisons on the same images (same ``key``) share their resamples.
    """
    rng = np.random.default_rng([int(seed), zlib.crc32(key.encode())])
    idx = rng.integers(0, n, size=(n_boot, n))
    flat = (idx + n * np.arange(n_boot)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n)


def boot_means(X: np.ndarray, W: np.ndarray | None) -> list[Est]:
    """Column means of ``X`` ``(n, k)`` with paired draws (``W`` from :func:`resample_weights`, all
    columns reweighted by the same resamples); ``W = None``: ``X`` is a table row, no resampling."""
    X = np.asarray(X, float)
    if W is None:
        return [point(v) for v in X.mean(0)]
    draws = W @ X / X.shape[0]
    return [Est(float(m), draws[:, j]) for j, m in enumerate(X.mean(0))]


def decide(est: Est, op: str, bound: float) -> str:
    """Is ``est op bound`` (``op`` in ``< <= > >=``)? ``"holds"`` if the whole 95% interval satisfies
    it, ``"does not hold"`` if the whole interval violates it, ``"undecided"`` if it straddles."""
    lo, hi = est.ci()
    if op == "<":
        ok, bad = hi < bound, lo >= bound
    elif op == "<=":
        ok, bad = hi <= bound, lo > bound
    elif op == ">":
        ok, bad = lo > bound, hi <= bound
    elif op == ">=":
        ok, bad = lo >= bound, hi < bound
    else:
        raise ValueError(f"unknown comparison {op!r}: choose one of <, <=, >, >=")
    return "holds" if ok else "does not hold" if bad else "undecided"


def conjunction(states) -> str:
    """All parts must hold: ``"does not hold"`` if any part does not, ``"holds"`` if all do, else undecided."""
    states = list(states)
    if not states:
        raise ValueError("a conjunction of no parts")
    if "does not hold" in states:
        return "does not hold"
    return "holds" if all(s == "holds" for s in states) else "undecided"


def holds_value(state: str):
    """The backward-compatible ``holds`` column: True / False / None (undecided or not testable)."""
    return {"holds": True, "does not hold": False}.get(state)


# ----------------------------------------------------------------------------- the data
def margin(p: np.ndarray, strategy) -> np.ndarray:
    """Signed distance of the target label's probability past 0.5 on the target side
    (``0.5 - p`` when reducing, ``p - 0.5`` when augmenting); ``strategy`` a name or an array of names."""
    return np.where(np.asarray(strategy) == "reduce", 0.5 - np.asarray(p, float), np.asarray(p, float) - 0.5)


def bin_index(p: np.ndarray, bins: int) -> np.ndarray:
    """The bin of each probability among ``bins`` equal bins of ``[0, 1]`` (as :func:`numpy.histogram`:
    half-open ``[a, b)``, the last one closed)."""
    return np.clip(np.searchsorted(np.linspace(0, 1, bins + 1), p, side="right") - 1, 0, bins - 1)


def overlap(a: np.ndarray, b: np.ndarray, bins: int = 20) -> float:
    """Histogram overlap ``sum_k min(h_a, h_b)`` of two probability samples (each normalised), in ``[0, 1]``."""
    ha = np.bincount(bin_index(np.asarray(a, float), bins), minlength=bins) / max(len(a), 1)
    hb = np.bincount(bin_index(np.asarray(b, float), bins), minlength=bins) / max(len(b), 1)
    return float(np.minimum(ha, hb).sum())


def is_records(data: pd.DataFrame) -> bool:
    return {"attack", "strategy", "index"} <= set(data.columns)


class ClaimData:
    """One data set of a records frame (bootstrap over images) or of an aggregated table (point values).

    ``dataset``: one of the data sets in ``data`` (default the first; an unknown name raises
    ``ValueError`` listing the valid ones); ``n_boot``: resamples, an int >= 2; ``seed``: a non-negative int.

    :meth:`means` gives paired :class:`Est` of a records column for some attacks of one strategy;
    a missing run, or a per-image quantity asked of a table, raises :class:`NotTestable`.
    """

    def __init__(self, data: pd.DataFrame, dataset: str | None, n_boot: int, seed: int):
        if dataset is not None and not isinstance(dataset, str):
            raise TypeError(f"dataset must be a name, got {type(dataset).__name__}: pass the records as `data`")
        check_int("n_boot", n_boot, minimum=2)  # one resample would read as a point (Est.is_point)
        check_seed(seed)
        self.n_boot, self.seed, self._w, self._piv = n_boot, seed, {}, {}
        if is_records(data):
            r = data
            if "dataset" in r and len(r):
                if dataset is not None:
                    check_choice("dataset", dataset, dict.fromkeys(r["dataset"]))
                r = r[r["dataset"] == (dataset or r["dataset"].iloc[0])]
            r = r[r["attack"].isin(ATTACK_NAMES)].copy()
            if "p_adv" in r:
                r["abs_half"] = (r["p_adv"] - 0.5).abs()
                r["margin"] = margin(r["p_adv"].to_numpy(float), r["strategy"].to_numpy())
            self.records, self.table, self.runs = r, None, set(zip(r["strategy"], r["attack"]))
        else:
            t = data
            if "dataset" in t.index.names:
                names = list(dict.fromkeys(t.index.get_level_values("dataset")))
                if dataset is not None:
                    check_choice("dataset", dataset, names)
                t = t.xs(dataset or names[0], level="dataset")
            self.records, self.table, self.runs = None, t, set(t.index)

    def require(self, strategy: str, *attacks: str) -> None:
        missing = [f"{a}/{strategy}" for a in attacks if (strategy, a) not in self.runs]
        if missing:
            raise NotTestable("not run: " + ", ".join(missing))

    def frame(self, strategy: str, attacks, key: str) -> pd.DataFrame:
        """Per-image ``key`` of ``attacks`` (columns) on the images all of them have (rows)."""
        self.require(strategy, *attacks)
        if self.records is None:
            raise NotTestable(f"no per-image records ({key} is a Fig. 1 quantity); pass the records frame")
        if key not in self.records:
            raise NotTestable(f"the records have no {key} column")
        if (strategy, key) not in self._piv:
            r = self.records[self.records["strategy"] == strategy]
            self._piv[strategy, key] = r.pivot(index="index", columns="attack", values=key).astype(float)
        return self._piv[strategy, key][list(attacks)].dropna()

    def weights(self, strategy: str, index) -> np.ndarray:
        k = (strategy, tuple(index))
        if k not in self._w:
            self._w[k] = resample_weights(len(index), key=f"{strategy}:{k[1]}", seed=self.seed, n_boot=self.n_boot)
        return self._w[k]

    def means(self, strategy: str, attacks, key: str) -> tuple[list[Est], int]:
        """Paired means of ``key`` (a records column) and the number of rmsd-0 images dropped."""
        if self.records is None:
            self.require(strategy, *attacks)
            if key not in METRIC_COLUMNS:
                raise NotTestable(f"no per-image records ({key} is a Fig. 1 quantity); pass the records frame")
            row = np.array([[self.table.loc[(strategy, a), METRIC_COLUMNS[key]] for a in attacks]], float)
            if np.isnan(row).any():
                raise NotTestable(f"{METRIC_COLUMNS[key]} is N.A. for one of {', '.join(attacks)} ({strategy})")
            return boot_means(row, None), 0
        X = self.frame(strategy, attacks, key)
        dropped = 0
        if key == "rmsd":  # a clean-image fallback says nothing about an attack's distortion
            zero = (X == 0).any(axis=1)
            dropped, X = int(zero.sum()), X[~zero]
        if X.empty and dropped:
            raise NotTestable(f"every image has rmsd 0 (the clean image) for one of {', '.join(attacks)} "
                              f"({strategy}): all {dropped} dropped")
        if X.empty:
            raise NotTestable(f"no image with {key} for every one of {', '.join(attacks)} ({strategy})")
        return boot_means(X.to_numpy(), self.weights(strategy, X.index)), dropped
