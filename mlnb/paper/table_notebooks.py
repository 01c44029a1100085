"""What the table notebooks 06 (Table IV) and 07 (Table V) share, written once: parse the table rows, run
(or resume) the experiment into ``results/<notebook>/runs``, save the table with its bootstrap intervals,
summarise the claims checks, and the metrics every table notebook records.

Introduced in notebooks/06_general_attacks.ipynb.
"""
from __future__ import annotations

import time

import pandas as pd

from ..experiment_plan import row_params
from ..experiments import ExperimentResult, run_experiment
from ..store import with_ci
from ..utils import results_dir, save_table
from .claims import STATES


def table_rows(attacks: str) -> list[str]:
    """The table rows of a notebook's ``ATTACKS`` parameter: ``"ml_cw, rank1,"`` -> ``["ml_cw", "rank1"]``."""
    return [a.strip() for a in attacks.split(",") if a.strip()]


def run_table(preset, rows: list[str], strategies: tuple[str, ...], notebook: str, *, seed: int, device,
              n: int, max_rmsd: float | None) -> tuple[ExperimentResult, float]:
    """:func:`mlnb.experiments.run_experiment` of ``rows`` x ``strategies`` on ``n`` images per strategy,
    stored (and resumed) under ``results/<notebook>/runs``; returns the result and the seconds it took."""
    t0 = time.perf_counter()
    res = run_experiment(preset, rows, strategies, out_dir=results_dir(notebook) / "runs", seed=seed,
                         device=device, n=n, max_rmsd=max_rmsd, progress=True)
    return res, time.perf_counter() - t0


def save_with_intervals(res: ExperimentResult, dataset: str, notebook: str, name: str):
    """``(table, lo, hi)`` of :meth:`ExperimentResult.with_intervals`, saved as ``<name>`` (means) and
    ``<name>_ci`` (each mean with its 95% bootstrap interval) under ``results/<notebook>/``."""
    table, lo, hi = res.with_intervals(dataset)
    save_table(table, notebook, name)
    save_table(with_ci(table, lo, hi), notebook, f"{name}_ci")
    return table, lo, hi


def claims_summary(claims: pd.DataFrame) -> tuple[dict, list[str]]:
    """``(metrics, lines)`` of a claims table (:mod:`mlnb.paper.claims`): the counts per state, the claims
    that hold among those checked (every state but "not testable") and each claim's state for
    ``metrics.json``; and the text lines a notebook prints (the counts, then each claim that does not
    hold or is undecided, with what was measured)."""
    states = claims["state"].value_counts().reindex(STATES, fill_value=0)
    metrics = {"claims_hold": int(states["holds"]), "claims_checked": int(len(claims) - states["not testable"]),
               "claims_states": {s: int(k) for s, k in states.items()},
               "claims": {row["claim"]: row["state"] for _, row in claims.iterrows()}}
    lines = ["claims per state: " + ", ".join(f"{s} {k}" for s, k in states.items())]
    lines += [f"{row['state'].upper()} here: {row['claim']}. Measured: {row['measured']}."
              for _, row in claims[claims["state"].isin(["does not hold", "undecided"])].iterrows()]
    return metrics, lines


def table_metrics(res: ExperimentResult, preset, dataset: str, strategies: tuple[str, ...], rows: list[str],
                  table: pd.DataFrame, key: str) -> dict:
    """The ``metrics.json`` fields every table notebook writes: the size of X, the images eligible per
    strategy, the images per row, the table itself under ``key`` and the parameters each row ran with."""
    return {"dataset": dataset, "attack_set_size": res.attack_set_size[dataset],
            "eligible": {s: res.eligible[(dataset, s)] for s in strategies},
            "n_images": int(res.records.groupby(["strategy", "attack"]).size().min()),
            key: {s: {a: table.loc[(s, a)].to_dict() for a in rows} for s in strategies},
            "attack_params": {a: row_params(preset, a, {}) for a in rows}}
