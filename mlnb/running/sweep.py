"""papermill sweeps: run one notebook over a grid of parameters, collect every run's ``metrics.json``.

    python -m mlnb.running.sweep --notebook 06_general_attacks --preset smoke --grid MAX_RMSD=1.0,4.0 --grid SEED=0,1
    make sweep                                             # the Makefile's example

Each grid point (the Cartesian product of the ``--grid`` values) is one papermill run with its
own results folder (``MLNB_RESULTS`` is pointed at ``<out>/runs/<hash>/`` for that kernel, so runs
never overwrite each other). A run whose ``metrics.json`` already exists with the same parameter
hash is skipped, so a stopped sweep resumes. Finally every run's scalar metrics are flattened
(``a.b`` for nested keys) into ``<out>/sweep.csv`` (one row per run) and plotted into
``<out>/sweep.png`` against the first swept parameter. Values are parsed as Python literals
(``ast.literal_eval``: numbers, strings, ``None``, ``True``), never evaluated as code.

A command-line tool, not called from a notebook: the exercises of notebooks/06_general_attacks.ipynb
suggest sweeping its ``MAX_RMSD`` with it.
"""
from __future__ import annotations

import argparse
import ast
import itertools
import json
import os
import sys
from pathlib import Path

import pandas as pd

from ..utils import atomic_write_text, param_hash, project_root, results_root


def parse_grid(items: list[str]) -> dict[str, list]:
    """``["NAME=v1,v2", ...]`` -> ``{"NAME": [v1, v2]}`` (values as Python literals, else strings)."""
    grid: dict[str, list] = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not name.strip() or not values.strip():
            raise ValueError(f"--grid {item!r}: write NAME=v1,v2,... (e.g. MAX_RMSD=1.0,4.0)")
        parsed = []
        for v in values.split(","):
            try:
                parsed.append(ast.literal_eval(v.strip()))
            except (ValueError, SyntaxError):
                parsed.append(v.strip())
        grid[name.strip()] = parsed
    return grid


def resolve_notebook(notebook: str | Path) -> Path:
    """A path, or a stem / number prefix of a notebook in ``notebooks/`` (``"06"``, ``"06_general_attacks"``)."""
    path = Path(notebook)
    if path.suffix == ".ipynb" and path.is_file():
        return path.resolve()
    folder = project_root() / "notebooks"
    found = sorted(p for p in folder.glob("*.ipynb") if p.stem == str(notebook) or p.stem[:2] == str(notebook))
    if len(found) != 1:
        valid = ", ".join(p.stem for p in sorted(folder.glob("[0-9][0-9]_*.ipynb")))
        raise ValueError(f"unknown notebook {str(notebook)!r}: choose one of {valid or '(none found in ' + str(folder) + ')'}")
    return found[0]


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[key] = v
    return out


def collect(out_dir: str | Path) -> pd.DataFrame:
    """Every run's ``metrics.json`` under ``<out_dir>/runs/`` as one DataFrame: ``run`` (hash), the
    parameters and the flattened scalar metrics, sorted by run hash."""
    rows = []
    for path in sorted(Path(out_dir).glob("runs/*/*/metrics.json")):
        rec = json.loads(path.read_text())
        rows.append({"run": path.parent.parent.name, "notebook": rec.get("notebook"),
                     **{k: v for k, v in rec.get("params", {}).items() if isinstance(v, (int, float, str, bool)) or v is None},
                     **_flatten(rec.get("metrics", {}))})
    return pd.DataFrame(rows)


def plot_metrics(table: pd.DataFrame, params, limit: int = 6) -> list[str]:
    """The numeric metric columns worth plotting: not parameters, those that vary across runs first."""
    cols = [c for c in table.select_dtypes("number").columns if c not in set(params) | {"run"}]
    varying = [c for c in cols if table[c].nunique(dropna=True) > 1]
    return (varying + [c for c in cols if c not in varying])[:limit]


def run_sweep(notebook: str | Path, grid: dict[str, list], *, out_dir: str | Path | None = None,
              base: dict | None = None, kernel_name: str = "python3", progress: bool = True) -> pd.DataFrame:
    """Execute ``notebook`` once per point of ``grid`` (``{PARAM: [values]}``) with papermill.

    ``base``: parameters shared by every run (e.g. ``{"PRESET": "smoke"}``). Writes the executed
    copies to ``<out_dir>/executed/``, each run's results under ``<out_dir>/runs/<hash>/``, and the
    collected ``sweep.csv`` / ``sweep.png``. Returns the collected table (one row per run).
    Default ``out_dir``: ``results/sweeps/<notebook>``.
    """
    import papermill as pm

    from ..plots import sweep_plot

    path = resolve_notebook(notebook)
    if not grid or any(not isinstance(v, (list, tuple)) or not v for v in grid.values()):
        raise ValueError("grid must map each parameter name to a non-empty list of values, e.g. {'SEED': [0, 1]}")
    out = Path(out_dir) if out_dir is not None else results_root() / "sweeps" / path.stem
    names = list(grid)
    for values in itertools.product(*(grid[k] for k in names)):
        params = {**(base or {}), **dict(zip(names, values))}
        h = param_hash(params)
        run_root = out / "runs" / h
        done = run_root / path.stem / "metrics.json"
        if done.is_file():  # resume: this grid point already ran to the end
            recorded = json.loads(done.read_text()).get("params", {})
            if all(recorded.get(k) == v for k, v in params.items()):
                continue
        old = os.environ.get("MLNB_RESULTS")
        os.environ["MLNB_RESULTS"] = str(run_root.resolve())
        try:
            (out / "executed").mkdir(parents=True, exist_ok=True)
            pm.execute_notebook(str(path), str(out / "executed" / f"{path.stem}__{h}.ipynb"), parameters=params,
                                cwd=str(path.parent), kernel_name=kernel_name, progress_bar=progress, log_output=False)
        finally:
            if old is None:
                os.environ.pop("MLNB_RESULTS", None)
            else:
                os.environ["MLNB_RESULTS"] = old
    table = collect(out)
    atomic_write_text(out / "sweep.csv", table.to_csv(index=False))
    if len(table) and names[0] in table:
        import matplotlib.pyplot as plt

        fig = sweep_plot(table, names[0], plot_metrics(table, {*names, *(base or {})}),
                         hue=names[1] if len(names) > 1 and names[1] in table else None)
        tmp = out / ".sweep.tmp.png"
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, out / "sweep.png")
        plt.close(fig)
    return table


def main(argv: list[str] | None = None) -> int:
    """``python -m mlnb.running.sweep``: run a grid, print the collected table."""
    ap = argparse.ArgumentParser(prog="python -m mlnb.running.sweep", description=__doc__.split("\n\n")[0],
                                 epilog="Example: python -m mlnb.running.sweep --notebook 06 --preset smoke "
                                        "--grid MAX_RMSD=1.0,4.0")
    ap.add_argument("--notebook", required=True, help="path, stem or number of a notebook (e.g. 06_general_attacks)")
    ap.add_argument("--grid", action="append", required=True, metavar="NAME=v1,v2",
                    help="a parameter and its values (repeatable: the grid is their product)")
    ap.add_argument("--preset", default=None, help="PRESET for every run (smoke, default, paper)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=value", help="a fixed parameter (repeatable)")
    ap.add_argument("--out", default=None, help="output folder (default: results/sweeps/<notebook>)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    base = {k: v[0] for k, v in parse_grid(args.set).items()}
    if args.preset:
        base["PRESET"] = args.preset
    table = run_sweep(args.notebook, parse_grid(args.grid), out_dir=args.out, base=base, progress=not args.no_progress)
    with pd.option_context("display.width", 160, "display.max_columns", 30):
        print(table.to_string(index=False))
    print(f"{len(table)} runs collected into {Path(args.out or results_root() / 'sweeps' / resolve_notebook(args.notebook).stem) / 'sweep.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
