"""papermill sweeps: run one notebook over a grid of parameters, collect every run's ``metrics.json``.

    python -m mlnb.running.sweep --notebook 06_general_attacks --preset smoke --grid MAX_RMSD=1.0,4.0 --grid SEED=0,1
    make sweep                                             # the Makefile's example

Each grid point (the Cartesian product of the ``--grid`` values) is one papermill run with its
own results folder (``MLNB_RESULTS`` is pointed at ``<out>/runs/<hash>/`` for that kernel, so runs
never overwrite each other). A run whose ``metrics.json`` already exists with the same parameter
hash is skipped, so a stopped sweep resumes. Finally every run's scalar metrics are flattened
(``a.b`` for nested keys) into ``<out>/sweep.csv`` (one row per run) and plotted into
``<out>/sweep.png`` against the first swept parameter. Values are parsed as Python literals
(``ast.literal_eval``: numbers, strings, lists, ``None``, ``True``), never evaluated as code; in ``--grid``
the commas outside quotes and brackets separate values, ``--set`` takes everything after ``=`` as one
value. A name that is not one of the notebook's parameters is refused before any run (papermill would
only warn and run the notebook with its defaults).

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

from ..utils import atomic_write_text, param_hash, project_root, replacing, results_root


def _literal(text: str):
    """A Python literal (numbers, strings, lists, ``None``, ``True``), else the text itself as a string."""
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text.strip()


def _split_values(values: str) -> list[str]:
    """Split ``v1,v2,...`` at the commas outside brackets and quotes (``'a,b',[1,2]`` is two values)."""
    parts, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(values):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(values[start:i])
            start = i + 1
    return parts + [values[start:]]


def _name_value(item: str, flag: str, example: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise ValueError(f"{flag} {item!r}: write {example}")
    return name.strip(), value


def parse_grid(items: list[str]) -> dict[str, list]:
    """``["NAME=v1,v2", ...]`` -> ``{"NAME": [v1, v2]}`` (values as Python literals, else strings). Commas
    inside brackets or quotes stay in their value: ``ATTACKS='ml_cw,rank1','fgs'`` and ``Q=[10,20],[30]``
    are two values each."""
    grid: dict[str, list] = {}
    for item in items:
        name, values = _name_value(item, "--grid", "NAME=v1,v2,... (e.g. MAX_RMSD=1.0,4.0)")
        grid[name] = [_literal(v) for v in _split_values(values)]
    return grid


def parse_set(items: list[str]) -> dict:
    """``["NAME=value", ...]`` -> ``{"NAME": value}``: the whole text after ``=`` is one value (a Python
    literal, else a string), so ``ATTACKS=ml_cw,rank1`` is the string ``"ml_cw,rank1"``."""
    fixed = {}
    for item in items:
        name, value = _name_value(item, "--set", "NAME=value (e.g. SEED=1 or ATTACKS=ml_cw,rank1)")
        fixed[name] = _literal(value)
    return fixed


def check_parameters(path: Path, params) -> None:
    """Every name in ``params`` is a parameter of the notebook (papermill would only warn and run it with its
    defaults); the error lists the notebook's parameters."""
    import papermill as pm

    known = set(pm.inspect_notebook(str(path)))
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"{path.stem} has no parameter {', '.join(map(repr, unknown))}: its parameters are "
                         f"{', '.join(sorted(known)) or '(none)'}")


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
    check_parameters(path, {**(base or {}), **grid})
    out = Path(out_dir) if out_dir is not None else results_root() / "sweeps" / path.stem
    names = list(grid)
    for values in itertools.product(*(grid[k] for k in names)):
        params = {**(base or {}), **dict(zip(names, values))}
        h = param_hash(params)
        run_root = out / "runs" / h
        done = run_root / path.stem / "metrics.json"
        if done.is_file():  # resume: this grid point already ran to the end
            recorded = json.loads(done.read_text()).get("params", {})
            # the folder's hash names these parameters; a parameter the notebook does not record is not compared
            if all(recorded[k] == v for k, v in params.items() if k in recorded):
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
        with replacing(out / "sweep.png") as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight")
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
    base = parse_set(args.set)
    if args.preset:
        base["PRESET"] = args.preset
    table = run_sweep(args.notebook, parse_grid(args.grid), out_dir=args.out, base=base, progress=not args.no_progress)
    with pd.option_context("display.width", 160, "display.max_columns", 30):
        print(table.to_string(index=False))
    print(f"{len(table)} runs collected into {Path(args.out or results_root() / 'sweeps' / resolve_notebook(args.notebook).stem) / 'sweep.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
