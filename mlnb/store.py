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

The tables are aggregated from the records (:func:`records_frame`, :func:`aggregate`, :func:`summary`).

Introduced in notebooks/06_general_attacks.ipynb.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterable

import pandas as pd

from .labels import STRATEGIES
from .presets import ATTACK_NAMES
from .utils import atomic_write_text, to_jsonable

METRIC_KEYS = ("rmsd", "hamming_A", "hamming_B", "f1", "ranking_loss", "map", "auc", "kendall_tau_b")
COLUMNS = {"rmsd": "RMSD", "hamming_A": "Hamming(A)", "hamming_B": "Hamming(B)", "f1": "F1",
           "ranking_loss": "Ranking loss", "map": "mAP", "auc": "AUC", "kendall_tau_b": "Kendall tau-b"}
HIGHER_IS_BETTER = {"RMSD": False, "Hamming(A)": False, "Hamming(B)": False, "F1": True,
                    "Ranking loss": False, "mAP": True, "AUC": True, "Kendall tau-b": True}
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
    records, pos = [], 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        line = data[pos:] if end < 0 else data[pos:end]
        try:
            if end < 0:
                raise ValueError("no trailing newline")
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
        if rec is not None:
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
        _read_lines(self.shard, repair=True)
        self._by_index: dict[int, dict] = {}
        self.reload()

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
    """Per-image records -> a DataFrame (missing / null metrics as NaN); adds ``p_clean`` / ``p_adv``,
    the target label's probability before / after the attack when ``|A| = 1`` (Fig. 1)."""
    frame = pd.DataFrame.from_records(records)
    if frame.empty:
        return frame
    for k in METRIC_KEYS + ("rmsd_raw", "param", "attack_kendall_tau"):
        if k in frame:
            frame[k] = pd.to_numeric(frame[k], errors="coerce").astype(float)
    single = frame["A"].map(len) == 1
    first = frame["A"].map(lambda a: a[0] if len(a) else -1)
    frame["p_clean"] = [s[j] if ok else float("nan") for s, j, ok in zip(frame["scores_clean"], first, single)]
    frame["p_adv"] = [s[j] if ok else float("nan") for s, j, ok in zip(frame["scores_adv"], first, single)]
    return frame


def aggregate(frame: pd.DataFrame, strategies=None, attacks=None) -> pd.DataFrame:
    """The paper's table (IV or V): mean per-image metrics, index ``(dataset, strategy, attack)`` in the
    order given (else the paper's), columns ``RMSD, Hamming(A), Hamming(B), F1, Ranking loss, mAP, AUC,
    Kendall tau-b``. Means skip NaN (``Hamming(B)`` with ``B = ∅`` is NaN, the paper's "N.A.")."""
    cols = list(COLUMNS.values())
    if frame.empty:
        return pd.DataFrame(columns=cols, index=pd.MultiIndex.from_tuples([], names=["dataset", "strategy", "attack"]))
    frame = frame.sort_values(["dataset", "strategy", "attack", "index"], kind="stable")
    table = frame.groupby(["dataset", "strategy", "attack"], sort=False)[list(METRIC_KEYS)].mean()
    table = table.rename(columns=COLUMNS)[cols]
    s_order = list(strategies or STRATEGIES)
    a_order = list(attacks or ATTACK_NAMES)
    order = sorted(table.index, key=lambda t: (t[0], s_order.index(t[1]), a_order.index(t[2])))
    return table.loc[order]


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, strategy, attack): images, success rate (target met on ``A ∪ B``) and fraction projected."""
    g = frame.groupby(["dataset", "strategy", "attack"], sort=False)
    return pd.DataFrame({"images": g.size(), "success_rate": g["success"].mean(),
                         "projected": g["projected"].mean()})
