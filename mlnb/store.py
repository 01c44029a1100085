"""An append-only, resumable store of per-image attack results (JSON lines).

One *run* is one (preset, data set, model, attack, strategy, parameter hash) combination; its
results live under ``<root>/<run key>/``:

* ``part-<rank>.jsonl``: the shard written by one process, one JSON object per line and per image
  (at least the keys ``index`` (int, position of the image in the data set) and ``image_id``);
* ``results.jsonl``: the merged file, written whole and atomically by :meth:`ResultStore.merge`.

Guarantees (issue 8, item 3):

* :meth:`ResultStore.append` writes a whole batch with one ``write``, then ``flush`` and ``fsync``:
  a ``SIGKILL`` loses at most the batch in flight;
* on opening, a half-written last line (no trailing newline, or not valid JSON) is *truncated* away;
  a corrupt line anywhere else raises, since silently dropping finished work would hide a bug;
* :meth:`ResultStore.records` returns every record once, sorted by ``index`` (never in completion
  order), so a resumed run aggregates to exactly the table of an uninterrupted one;
* whole files (the merged file) are written with :func:`mlnb.utils.atomic_write_text`.

The tables are aggregated from the records (:func:`records_frame`, :func:`aggregate`, :func:`summary`),
with percentile-bootstrap confidence intervals over images (:func:`aggregate_ci`, :func:`with_ci`).

Introduced in notebooks/06_general_attacks.ipynb.
"""
from __future__ import annotations

import json
import os
import re
import warnings
import zlib
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from .labels import STRATEGIES
from .presets import ROW_NAMES
from .metrics import METRIC_COLUMNS, METRIC_KEYS
from .utils import atomic_write_text, to_jsonable
from .validate import check_positive, check_seed

HIGHER_IS_BETTER = {"RMSD": False, "Hamming(A)": False, "Hamming(B)": False, "F1": True,
                    "Ranking loss": False, "mAP": True, "AUC": True, "Kendall tau-b": True,
                    "Success": True, "Clean": False}
TABLE_COLUMNS = (*METRIC_COLUMNS.values(), "Success", "Clean")  # the columns of aggregate()
GROUP = ["dataset", "strategy", "attack"]
MERGED = "results.jsonl"
_SAFE = re.compile(r"[^A-Za-z0-9_.=-]+")


def run_key(*, preset: str, dataset: str, model: str, attack: str, strategy: str, params_hash: str) -> str:
    """The folder name of one run: ``<preset>__<dataset>__<model>__<attack>__<strategy>__<hash>``
    (characters outside ``[A-Za-z0-9_.=-]`` replaced by ``-``)."""
    parts = (preset, dataset, model, attack, strategy, params_hash)
    return "__".join(_SAFE.sub("-", str(p)) for p in parts)


def dumps_record(record: dict) -> str:
    """One record as a single JSON line (sorted keys; NaN / Inf stored as ``null``), without newline."""
    return json.dumps(to_jsonable(record), sort_keys=True, separators=(",", ":"), allow_nan=False)


def _read_lines(path: Path, *, repair: bool) -> list[dict]:
    """Parse a JSON-lines file; a broken *last* line is truncated away when ``repair`` (else skipped)."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    records, pos, number = [], 0, 0
    while pos < len(data):
        end, number = data.find(b"\n", pos), number + 1
        try:
            if end < 0:
                raise ValueError("no trailing newline")
            line = data[pos:end]
            rec = json.loads(line) if line.strip() else None
        except ValueError:
            rest = data[end + 1:] if end >= 0 else b""
            if rest.strip():
                raise ValueError(f"{path}: corrupt line at byte {pos} followed by more data; the file was "
                                 f"edited or written by something else: move it away to recompute") from None
            if repair:  # a half-written last line from a kill: cut it off
                with open(path, "r+b") as fh:
                    fh.truncate(pos)
                    fh.flush()
                    os.fsync(fh.fileno())
            break
        if line.strip():  # blank lines are skipped; a JSON line that is not a record raises
            idx = rec.get("index") if isinstance(rec, dict) else None
            if isinstance(idx, bool) or not isinstance(idx, (int, float)) or not float(idx).is_integer():
                raise ValueError(f"{path}: line {number} (byte {pos}) is not a record (a JSON object with a whole-number "
                                 f"\"index\"): {line[:60].decode(errors='replace')}; move the file away to recompute")
            records.append(rec)
        pos = end + 1
    return records


class ResultStore:
    """Per-image results of one run, shared by the processes of a (possibly distributed) job.

    ``root``: the folder of all runs; ``key``: :func:`run_key`; ``rank``: this process's shard.
    Opening repairs this rank's shard (truncated last line) and loads every shard and the merged
    file, so :meth:`done` knows what any earlier run, with any number of processes, finished.

    Introduced in notebooks/06_general_attacks.ipynb.
    """

    def __init__(self, root: str | Path, key: str, *, rank: int = 0):
        self.folder = Path(root) / key
        self.folder.mkdir(parents=True, exist_ok=True)
        self.key, self.rank = key, int(rank)
        self.shard = self.folder / f"part-{self.rank}.jsonl"
        self._by_index: dict[int, dict]
        self.reload()  # repairs this rank's shard

    def reload(self) -> None:
        """Re-read the merged file and every shard (other ranks' shards are read, never repaired)."""
        self._by_index = {}
        for path in [self.folder / MERGED, *sorted(self.folder.glob("part-*.jsonl"))]:
            for rec in _read_lines(path, repair=path == self.shard):
                self._by_index.setdefault(int(rec["index"]), rec)

    def done(self) -> set[int]:
        """Data-set indices whose result is stored."""
        return set(self._by_index)

    def append(self, records: Iterable[dict]) -> int:
        """Append a batch of records to this rank's shard: one write, then flush and fsync.

        Records whose ``index`` is already stored are skipped. Returns the number written.
        """
        fresh = []
        for rec in records:
            idx = int(rec["index"])
            if idx not in self._by_index:
                fresh.append(rec)
                self._by_index[idx] = json.loads(dumps_record(rec))
        if fresh:
            text = "".join(dumps_record(r) + "\n" for r in fresh)
            with open(self.shard, "ab") as fh:
                fh.write(text.encode())
                fh.flush()
                os.fsync(fh.fileno())
        return len(fresh)

    def records(self, indices: Iterable[int] | None = None) -> list[dict]:
        """Stored records sorted by ``index`` (those in ``indices`` only, if given; missing ones skipped)."""
        keys = sorted(self._by_index) if indices is None else sorted(set(indices) & set(self._by_index))
        return [self._by_index[i] for i in keys]

    def merge(self, *, remove_shards: bool = True) -> Path:
        """Write every stored record, sorted by ``index``, to ``results.jsonl`` atomically, then
        delete the shards (their content is in the merged file). Call from one process only."""
        self.reload()
        text = "".join(dumps_record(r) + "\n" for r in self.records())
        path = atomic_write_text(self.folder / MERGED, text)
        if remove_shards:
            for shard in self.folder.glob("part-*.jsonl"):
                shard.unlink(missing_ok=True)
        return path

    def __len__(self) -> int:
        return len(self._by_index)

    def __repr__(self) -> str:
        return f"ResultStore({str(self.folder)!r}, rank={self.rank}, {len(self)} records)"


# ----------------------------------------------------------------------------- tables from the records
def records_frame(records: list[dict]) -> pd.DataFrame:
    """Per-image records -> a DataFrame (missing / null metrics as NaN); adds ``p_clean`` / ``p_adv``, the target
    label's probability before / after the attack when ``|A| = 1`` (Fig. 1; NaN without ``A`` or the scores)."""
    frame = pd.DataFrame.from_records(records)
    if frame.empty:
        return frame
    for k in METRIC_KEYS + ("rmsd_raw", "param", "attack_kendall_tau"):
        if k in frame:
            frame[k] = pd.to_numeric(frame[k], errors="coerce").astype(float)
    for col, scores in (("p_clean", "scores_clean"), ("p_adv", "scores_adv")):
        s_a = zip(frame.get(scores, [None] * len(frame)), frame.get("A", [None] * len(frame)))
        frame[col] = [s[a[0]] if np.ndim(a) == 1 and len(a) == 1 and np.ndim(s) == 1 else np.nan for s, a in s_a]
    return frame


def _values(frame: pd.DataFrame) -> pd.DataFrame:
    """Per-image values behind each table column: the metrics, RMSD NaN on a clean-image fallback
    (``rmsd == 0``), ``Success`` 0 / 1 (NaN if unknown) and ``Clean`` 0 / 1."""
    v = frame[list(METRIC_KEYS)].astype(float).rename(columns=METRIC_COLUMNS)
    v["RMSD"] = v["RMSD"].where(v["RMSD"] > 0)
    v["Success"] = frame["success"].astype(float) if "success" in frame else np.nan
    v["Clean"] = (frame["rmsd"].astype(float) == 0).astype(float)
    return v


def _empty() -> pd.DataFrame:
    return pd.DataFrame(columns=list(TABLE_COLUMNS), index=pd.MultiIndex.from_tuples([], names=GROUP))


def _ordered(table: pd.DataFrame, strategies, attacks) -> pd.DataFrame:
    """Rows by data set, then ``strategies`` (default the paper's), then ``attacks`` (default
    :data:`mlnb.presets.ROW_NAMES`); names missing from an order go last, in order of appearance."""
    s_order, a_order = list(strategies or STRATEGIES), list(attacks or ROW_NAMES)
    pos = lambda order, v: order.index(v) if v in order else len(order)  # noqa: E731
    keys = {t: (t[0], pos(s_order, t[1]), pos(a_order, t[2]), i) for i, t in enumerate(table.index)}
    return table.loc[sorted(table.index, key=keys.get)]


def aggregate(frame: pd.DataFrame, strategies=None, attacks=None) -> pd.DataFrame:
    """The paper's table (IV or V): mean per-image metrics, index ``(dataset, strategy, attack)`` (the
    attack level holds table rows) in the order given (else the paper's), columns ``RMSD, Hamming(A),
    Hamming(B), F1, Ranking loss, mAP, AUC, Kendall tau-b, Success, Clean``. Means skip NaN
    (``Hamming(B)`` with ``B = ∅`` is NaN, the paper's "N.A.").

    ``Success``: the fraction of images whose target is met (``record["success"]``). ``Clean``: the
    number of images the attack returned unchanged (``rmsd == 0``), a clean-image fallback, since
    every attacked image starts outside its target state. ``RMSD`` is the mean over the *perturbed*
    images only (``rmsd > 0``; NaN if none): fallbacks are kept out of RMSD comparisons, where their
    zero would otherwise lower the mean of the attack that failed more often.
    """
    if frame.empty:
        return _empty()
    frame = frame.sort_values([*GROUP, "index"], kind="stable")
    v = _values(frame)
    by = [frame[k] for k in GROUP]
    g = v.groupby(by, sort=False)
    ref = g.first()  # means as ref + mean(v - ref): a constant column averages to exactly its value
    table = (ref + (v - g.transform("first")).groupby(by, sort=False).mean())[list(TABLE_COLUMNS)]
    table["Clean"] = g["Clean"].sum().astype(int)
    return _ordered(table, strategies, attacks)


def aggregate_ci(frame: pd.DataFrame, strategies=None, attacks=None, *, level: float = 0.95,
                 n_boot: int = 1000, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Percentile-bootstrap confidence intervals of :func:`aggregate`'s cells: ``(lo, hi)``, two
    DataFrames with its index and columns.

    Within each ``(dataset, strategy, attack)`` group the images are resampled with replacement
    ``n_boot`` times; each resample gives every column's statistic as :func:`aggregate` computes it
    (NaN-aware mean; ``Clean``: the count; ``RMSD`` over perturbed images), and ``lo`` / ``hi`` are the
    ``(1 - level) / 2`` and ``(1 + level) / 2`` percentiles of the resamples (resamples where a column
    is undefined, e.g. no perturbed image, are skipped; NaN if all are). Vectorised: one ``(n_boot, n)``
    count matrix per group. Reproducible: a group's generator is ``numpy.random.default_rng([seed,
    crc32(group)])``, so a row's interval does not depend on which other rows are in ``frame``.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}: pass e.g. level=0.95")
    check_positive("n_boot", n_boot, integer=True)
    check_seed(seed)
    if frame.empty:
        return _empty(), _empty()
    frame = frame.sort_values([*GROUP, "index"], kind="stable")
    v = _values(frame)[list(TABLE_COLUMNS)]
    is_count = np.array([c == "Clean" for c in TABLE_COLUMNS])
    q = [50 * (1 - level), 50 * (1 + level)]
    lo, hi = {}, {}
    for key, g in v.groupby([frame[k] for k in GROUP], sort=False):
        vals = g.to_numpy(float)  # (n, K)
        n, nb = vals.shape[0], int(n_boot)
        rng = np.random.default_rng([int(seed), zlib.crc32("|".join(map(str, key)).encode())])
        pick = rng.integers(0, n, size=(nb, n)) + n * np.arange(nb)[:, None]
        counts = np.bincount(pick.ravel(), minlength=nb * n).reshape(nb, n).astype(float)  # (n_boot, n)
        ok = ~np.isnan(vals)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns / resamples: NaN
            center = vals[ok.argmax(0), np.arange(vals.shape[1])]  # first valid value, as aggregate()
            dev = np.where(ok, vals - center, 0.0)  # centred: a constant column resamples to exactly itself
            m = counts @ ok
            stat = np.where(is_count, counts @ np.where(ok, vals, 0.0), center + (counts @ dev) / np.where(m > 0, m, 1))
            stat = np.where(is_count | (m > 0), stat, np.nan)
            lo[key], hi[key] = np.nanpercentile(stat, q, axis=0)
    to_frame = lambda d: pd.DataFrame.from_dict(d, orient="index", columns=list(TABLE_COLUMNS))  # noqa: E731
    lo, hi = to_frame(lo), to_frame(hi)
    lo.index = hi.index = pd.MultiIndex.from_tuples(list(lo.index), names=GROUP)
    order = _ordered(lo, strategies, attacks).index
    return lo.loc[order], hi.loc[order]


def with_ci(table: pd.DataFrame, lo: pd.DataFrame, hi: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """Cells as strings ``"0.1234 [0.1000, 0.1500]"`` (mean [lo, hi], ``digits`` decimals; ``Clean``
    as whole numbers; a NaN mean prints "N.A."), for notebooks. ``lo`` / ``hi``: :func:`aggregate_ci`."""
    lo, hi = lo.reindex(index=table.index, columns=table.columns), hi.reindex(index=table.index, columns=table.columns)
    fmt = lambda x, d: "nan" if pd.isna(x) else f"{float(x):.{d}f}"  # noqa: E731
    out = pd.DataFrame(index=table.index)  # the columns are added below, in the table's order
    for c in table.columns:
        d = 0 if c == "Clean" else int(digits)
        out[c] = ["N.A." if pd.isna(v) else f"{fmt(v, d)} [{fmt(a, d)}, {fmt(b, d)}]"
                  for v, a, b in zip(table[c], lo[c], hi[c])]
    return out


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, strategy, attack): images, success rate (target met on ``A ∪ B``) and fraction projected
    (NaN where the records have no ``success`` / ``projected``); ``ValueError`` without the three keys."""
    if missing := [c for c in GROUP if c not in frame]:
        raise ValueError(f"summary needs the records' keys {', '.join(missing)}, missing here: pass records_frame() "
                         f"of the records mlnb.experiments stores, or add those keys to every record")
    g = frame.groupby(GROUP, sort=False)
    mean = lambda c: g[c].mean() if c in frame else pd.Series(np.nan, index=g.size().index)  # noqa: E731
    return pd.DataFrame({"images": g.size(), "success_rate": mean("success"), "projected": mean("projected")})
