"""The main job: execute every notebook with papermill, render HTML and write ``results/index.html``.

    python -m mlnb.running.pipeline run --preset default          # what `make run` calls
    python -m mlnb.running.pipeline run --only 03,05 --preset smoke
    python -m mlnb.running.pipeline prepare --preset smoke --out build/nbval   # parameterised copies for nbval
    python -m mlnb.running.pipeline explore --preset default --port 8866       # what `make explore` calls

Each notebook runs in its own kernel with the working directory set to ``notebooks/``; its
executed copy goes to ``results/executed/`` and its HTML to ``results/html/``. The time each
notebook took is recorded in ``results/pipeline.json``, written after every notebook, so a run
that is stopped can be resumed with ``--resume`` (notebooks already executed with the same
parameters are skipped).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from ..presets import PRESETS
from ..utils import DEVICE_CHOICES, atomic_write_text, param_hash, project_root, results_root, write_json
from ..validate import check_choice, check_seed


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

    Returns the log: per-notebook seconds and status, the total, and the parameters. ``seed`` and
    ``device`` (:data:`mlnb.utils.DEVICE_CHOICES`, e.g. ``"cuda:1"``) are checked before any kernel starts.
    A failing notebook stops the run: it is logged ``"failed"`` with its ``"error"`` and the error raised
    again; its partial executed copy is kept for inspection.
    """
    import papermill as pm

    check_choice("preset", preset, PRESETS)
    check_seed(seed)
    check_choice("device", re.sub(r":\d+$", "", str(device)), DEVICE_CHOICES)  # exists? resolve_device, in the kernel
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
        try:
            pm.execute_notebook(str(path), str(out), parameters=params, cwd=str(path.parent),
                                kernel_name="python3", progress_bar=progress, log_output=False)
        except BaseException as err:  # Ctrl-C too: the log must not say "running" for a notebook that stopped
            error, secs = f"{type(err).__name__}: {err}"[:2000], round(time.perf_counter() - t0, 1)
            log["notebooks"][path.stem] = {"status": "failed", "seconds": secs, "error": error}
            write_json(log_path, log)
            raise
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


#: The MathJax 2 configuration shipped by ``jupyter-server-mathjax`` (HTML-CSS output, local web fonts).
MATHJAX_CONFIG = "TeX-AMS-MML_HTMLorMML-full,Safe"
#: Where the report's own assets go, relative to the results folder.
ASSETS = Path("assets")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
# nbconvert's lab template without what it fetches from a CDN: require.js, the widget manager, mermaid
_OFFLINE_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""
_NO_PICTURE = ('<p><em>An interactive widget stood here. Open the notebook in JupyterLab, or run '
               '<code>make explore</code> for the explorer, to use it.</em></p>')


def copy_mathjax(dest: Path) -> Path:
    """Copy the MathJax 2 tree of the ``jupyter-server-mathjax`` package to ``dest`` (once per
    version; every file and folder created under the user's umask) and return ``dest``.

    Called by `make run` (`render_html`) through ``python -m mlnb.running.pipeline``; no notebook calls it.
    """
    import shutil

    import jupyter_server_mathjax

    src = Path(jupyter_server_mathjax.__file__).parent / "static"
    stamp = dest / ".mlnb-version"
    version = getattr(jupyter_server_mathjax, "__version__", "unknown")
    if stamp.is_file() and stamp.read_text() == version and (dest / "MathJax.js").is_file():
        return dest
    for path in sorted(src.rglob("*")):
        target = dest / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)  # a new file gets 0666 & ~umask, not the package's mode
    atomic_write_text(stamp, version)
    return dest


def static_widgets(nb) -> int:
    """Make ``nb`` (an ``nbformat`` node, changed in place) readable without a widget manager: a
    widget view that carries a picture of itself (``image/png``, as the explorer app does) shows the
    picture, any other gets a one-line note; the saved widget state is dropped. Returns the number
    of widget views replaced.

    Called by `make run` (`render_html`) through ``python -m mlnb.running.pipeline``; no notebook calls it.
    """
    n = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if WIDGET_VIEW not in data:
                continue
            del data[WIDGET_VIEW]
            if not any(k.startswith("image/") for k in data):
                data["text/html"] = _NO_PICTURE
            n += 1
    nb.metadata.pop("widgets", None)
    return n


def offline_exporter(mathjax_url: str):
    """nbconvert's ``HTMLExporter`` (lab template) that loads MathJax from ``mathjax_url`` and
    nothing from a CDN (no require.js, widget manager or mermaid).

    Called by `make run` (`render_html`) through ``python -m mlnb.running.pipeline``; no notebook calls it.
    """
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    return HTMLExporter(template_name="lab", template_file="mlnb_offline.html.j2", mathjax_url=mathjax_url,
                        extra_loaders=[DictLoader({"mlnb_offline.html.j2": _OFFLINE_TEMPLATE})])


def render_html(executed: Path, html_dir: Path, assets: Path | None = None) -> list[Path]:
    """Render every executed notebook in ``executed`` to ``html_dir`` with nbconvert, offline: MathJax
    is copied to ``assets`` (default ``<html_dir>/../assets``) and referenced relatively, nothing is
    loaded from a CDN and widgets show a static picture (:func:`static_widgets`), so the results
    folder can be copied or served as is.

    Called by `make run` (`render_html`) through ``python -m mlnb.running.pipeline``; no notebook calls it.
    """
    import os

    import nbformat

    html_dir.mkdir(parents=True, exist_ok=True)
    assets = assets if assets is not None else html_dir.parent / ASSETS
    mathjax = copy_mathjax(assets / "mathjax")
    rel = Path(os.path.relpath(mathjax / "MathJax.js", html_dir)).as_posix()
    exporter = offline_exporter(f"{rel}?config={MATHJAX_CONFIG}")
    written = []
    for nb_path in sorted(executed.glob("*.ipynb")):
        nb = nbformat.read(nb_path, as_version=4)
        static_widgets(nb)
        body, _ = exporter.from_notebook_node(nb)
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


def voila_command(notebook: Path, *, ip: str = "127.0.0.1", port: int = 8866) -> list[str]:
    """The Voilà command line that serves ``notebook`` as a standalone page on ``ip:port``: outputs
    and widgets only (no code), MathJax from a local copy next to the notebook (served by Voilà's
    ``/voila/files/``, which serves nothing else). Voilà 0.5's page still links Font Awesome's CSS
    from a CDN (icons, which the explorer does not use): offline that request fails and nothing
    changes on the page.

    Called by `make explore` through ``python -m mlnb.running.pipeline``; no notebook calls it.
    """
    copy_mathjax(notebook.parent / "mathjax")
    return [sys.executable, "-m", "voila", str(notebook), "--no-browser", f"--Voila.ip={ip}", f"--port={port}",
            "--Voila.port_retries=0", "--strip_sources=True",
            "--Voila.mathjax_url=voila/files/mathjax/MathJax.js", f"--Voila.mathjax_config={MATHJAX_CONFIG}",
            "--VoilaConfiguration.file_allowlist=['mathjax/.*']"]


def explore(preset: str = "default", *, seed: int = 0, ip: str = "127.0.0.1", port: int = 8866,
            folder: Path | None = None) -> int:
    """Serve notebooks/10_explorer.ipynb (parameterised with ``preset`` and ``seed`` into ``folder``,
    default ``build/explore``) with Voilà on ``ip:port`` until interrupted; prints the address.

    Called by `make explore` through ``python -m mlnb.running.pipeline``; no notebook calls it.
    """
    import subprocess

    folder = folder or project_root() / "build" / "explore"
    notebook = prepare_notebooks(folder, preset, seed=seed, only=["10"])[0]
    cmd = voila_command(notebook, ip=ip, port=port)
    print(f"explorer (notebook 10, preset {preset}) at http://{ip}:{port}/  -- Ctrl-C stops it", flush=True)
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:
        return 0


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
    exp = sub.add_parser("explore", help="serve notebook 10 (the explorer) as a web page with Voila")
    exp.add_argument("--preset", default="default", choices=sorted(PRESETS))
    exp.add_argument("--seed", type=int, default=0)
    exp.add_argument("--ip", default="127.0.0.1", help="address to listen on (default: loopback only)")
    exp.add_argument("--port", type=int, default=8866)
    exp.add_argument("--dir", type=Path, default=None, help="where the parameterised notebook goes (build/explore)")
    args = parser.parse_args(argv)
    if args.command == "explore":
        return explore(args.preset, seed=args.seed, ip=args.ip, port=args.port, folder=args.dir)
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
