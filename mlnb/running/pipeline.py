"""The main job: execute every notebook with papermill, render HTML and write ``results/index.html``.

    python -m mlnb.running.pipeline run --preset default          # what `make run` calls
    python -m mlnb.running.pipeline run --only 03,05 --preset smoke
    python -m mlnb.running.pipeline prepare --preset smoke --out build/nbval   # parameterised copies for nbval

Each notebook runs in its own kernel with the working directory set to ``notebooks/``; its
executed copy goes to ``results/executed/`` and its HTML to ``results/html/``. The time each
notebook took is recorded in ``results/pipeline.json``, written after every notebook, so a run
that is stopped can be resumed with ``--resume`` (notebooks already executed with the same
parameters are skipped).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..presets import PRESETS
from ..utils import atomic_write_text, param_hash, project_root, results_root, write_json
from ..validate import check_choice


def notebook_paths(only: list[str] | None = None, folder: Path | None = None) -> list[Path]:
    """The notebooks in reading order (``NN_slug.ipynb``); ``only`` filters by number prefix or stem."""
    folder = folder or project_root() / "notebooks"
    paths = sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        raise FileNotFoundError(f"no notebooks found in {folder}: run from the repository (or set the folder)")
    if only:
        wanted = set(only)
        chosen = [p for p in paths if p.stem in wanted or p.stem[:2] in wanted]
        missing = wanted - {p.stem for p in chosen} - {p.stem[:2] for p in chosen}
        if missing:
            raise ValueError(f"unknown notebook(s) {sorted(missing)}: choose from {[p.stem for p in paths]}")
        paths = chosen
    return paths


def _load_log(path: Path) -> dict:
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return {}
    return {}


def run_notebooks(preset: str = "default", *, seed: int = 0, device: str = "auto", only: list[str] | None = None,
                  html: bool = True, resume: bool = False, progress: bool = True) -> dict:
    """Execute the notebooks with papermill, render them to HTML and write the index.

    Returns the log: per-notebook seconds and status, the total, and the parameters.
    A failing notebook stops the run (its partial executed copy is kept for inspection).
    """
    import papermill as pm

    check_choice("preset", preset, PRESETS)
    params = {"PRESET": preset, "SEED": seed, "DEVICE": device}
    root = results_root()
    executed = root / "executed"
    executed.mkdir(parents=True, exist_ok=True)
    log_path = root / "pipeline.json"
    log = _load_log(log_path) if resume else {}
    if log.get("params_hash") != param_hash(params):
        log = {"params": params, "params_hash": param_hash(params), "notebooks": {}}
    start = time.perf_counter()
    for path in notebook_paths(only):
        done = log["notebooks"].get(path.stem, {})
        if resume and done.get("status") == "ok":
            continue
        out = executed / path.name
        t0 = time.perf_counter()
        log["notebooks"][path.stem] = {"status": "running"}
        write_json(log_path, log)
        pm.execute_notebook(str(path), str(out), parameters=params, cwd=str(path.parent),
                            kernel_name="python3", progress_bar=progress, log_output=False)
        log["notebooks"][path.stem] = {"status": "ok", "seconds": round(time.perf_counter() - t0, 1)}
        write_json(log_path, log)
    log["total_seconds"] = round(sum(v.get("seconds", 0) for v in log["notebooks"].values()), 1)
    log["wall_seconds_this_call"] = round(time.perf_counter() - start, 1)
    if html:
        render_html(executed, root / "html")
        from .report import write_index

        write_index(root, root / "html")
    write_json(log_path, log)
    return log


def render_html(executed: Path, html_dir: Path) -> list[Path]:
    """Render every executed notebook in ``executed`` to ``html_dir`` with nbconvert (offline)."""
    import nbformat
    from nbconvert import HTMLExporter

    html_dir.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter()
    written = []
    for nb_path in sorted(executed.glob("*.ipynb")):
        body, _ = exporter.from_notebook_node(nbformat.read(nb_path, as_version=4))
        target = html_dir / f"{nb_path.stem}.html"
        atomic_write_text(target, body)
        written.append(target)
    return written


def prepare_notebooks(out: Path, preset: str = "smoke", *, seed: int = 0, only: list[str] | None = None) -> list[Path]:
    """Write parameterised, unexecuted copies (papermill ``prepare_only``) for ``pytest --nbval-lax``."""
    import papermill as pm

    check_choice("preset", preset, PRESETS)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in notebook_paths(only):
        target = out / path.name
        pm.execute_notebook(str(path), str(target), parameters={"PRESET": preset, "SEED": seed},
                            prepare_only=True, kernel_name="python3", progress_bar=False)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlnb.running.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute every notebook, render HTML, write results/index.html")
    run.add_argument("--preset", default="default", choices=sorted(PRESETS))
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--device", default="auto")
    run.add_argument("--only", default="", help="comma-separated notebook numbers or stems (default: all)")
    run.add_argument("--no-html", action="store_true", help="skip HTML rendering and the index")
    run.add_argument("--resume", action="store_true", help="skip notebooks already executed with these parameters")
    prep = sub.add_parser("prepare", help="write parameterised copies for nbval")
    prep.add_argument("--preset", default="smoke", choices=sorted(PRESETS))
    prep.add_argument("--seed", type=int, default=0)
    prep.add_argument("--out", type=Path, required=True)
    prep.add_argument("--only", default="")
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()] or None
    if args.command == "prepare":
        for p in prepare_notebooks(args.out, args.preset, seed=args.seed, only=only):
            print(p)
        return 0
    log = run_notebooks(args.preset, seed=args.seed, device=args.device, only=only, html=not args.no_html,
                        resume=args.resume)
    for stem, rec in log["notebooks"].items():
        print(f"{stem:28s} {rec.get('status'):8s} {rec.get('seconds', 0):8.1f} s")
    print(f"{'total':28s} {'':8s} {log['total_seconds']:8.1f} s   -> {results_root()}/index.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
