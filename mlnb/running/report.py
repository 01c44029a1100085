"""``results/index.html``: one page linking every rendered notebook, figure and table of a run.

The pipeline (``mlnb.running.pipeline``) executes the notebooks with papermill, renders them with
nbconvert into ``results/html/`` and then calls :func:`write_index`. Each notebook gets a section with
its title (the first line of its first markdown cell), a link to its HTML, and one line per figure
(``.png``), table (``.csv``) and metrics file (``.json``) under ``results/<notebook>/``.

Introduced in notebooks/10_explorer.ipynb.
"""
from __future__ import annotations

import html
import json
import math
import os
import re
from pathlib import Path
from urllib.parse import quote

from ..utils import atomic_write_text, project_root, results_root as _results_root

KINDS = {".png": "figure", ".svg": "figure", ".csv": "table", ".json": "metrics"}
SKIP_DIRS = {"executed", "html", "assets"}
NOTEBOOK_DIR = re.compile(r"^\d\d_[\w.-]+$")

#: One line per well-known file; keys are ``"<notebook>/<file>"`` or a bare file name.
DESCRIPTIONS: dict[str, str] = {
    "metrics.json": "every number the notebook reports, its parameters, seed and environment",
    "08_case_study/fig2.png": "Fig. 2: the four labels' probabilities before / after ML-CW and Rank II, "
                              "the original and adversarial images, and the magnified perturbations",
    "09_jpeg_defense/fig3.png": "Fig. 3: histograms of the target label's probability for original, "
                                "adversarial PNG and adversarial JPEG images, with their overlaps",
    "09_jpeg_defense/quality_sweep.csv": "JPEG quality 10-100 (plus bit depth and median smoothing): "
                                         "attack success after the defense and clean mAP",
    "09_jpeg_defense/quality_sweep.png": "attack success after the defense vs clean mAP, per JPEG quality "
                                         "and per feature-squeezing setting",
    "09_jpeg_defense/adaptive.csv": "the adaptive attacker: ML-CW through JPEG with BPDA vs the plain attack",
    "09_jpeg_defense/adaptive_histograms.png": "the target label's probability after the adaptive (BPDA) "
                                               "ML-CW, saved as PNG and re-encoded as JPEG",
    "10_explorer/explorer.png": "the explorer's view for its default selection",
    "11_transfer/transfer_heatmap.png": "full success, A flipped and B damaged on the target, per source model and "
                                        "attack",
    "11_transfer/transfer_heatmap_bounded.png": "the same at a common RMSD bound",
    "11_transfer/transfer_matrix.csv": "per source model (surrogates, ensemble, white box) and attack: full success, "
                                       "A flipped, B damaged, RMSD on the target",
    "11_transfer/thresholds.csv": "Type I vs Type II against a target with tuned per-label thresholds (Sec. III-A3)",
    "11_transfer/claims.csv": "the transfer claims, measured here",
    "12_robust_training/attack_success.png": "attack success of the six attacks and ML-CW through JPEG (BPDA), "
                                             "standard vs adversarially trained model",
    "12_robust_training/attacks.csv": "per model and attack: success, success within a common RMSD bound, RMSD",
    "12_robust_training/table3.csv": "Table III of the standard and the adversarially trained model",
    "12_robust_training/certified_accuracy.png": "certified accuracy of the whole label set against the L2 radius, "
                                                 "per noise level, standard vs adversarially trained",
    "12_robust_training/certificates.csv": "per model and noise level: label sets right and certified, median "
                                           "radius, certified accuracy",
    "12_robust_training/certificate_check.png": "ML-CW through the smoothing: each attacked label's certified "
                                                "radius against the perturbation's L2 norm",
    "13_successors/random_case.csv": "ML-CW, ML-DP and MLA-LP on the same random-case targets",
    "13_successors/topk_targeted.csv": "TkML-AP vs Rank I / II: top-k success and L2",
    "13_successors/claims.csv": "the successors' claims, measured here",
}


def _first_title(nb_path: Path) -> str | None:
    """First non-empty line of the notebook's first markdown cell, without leading ``#``."""
    try:
        cells = json.loads(nb_path.read_text(encoding="utf-8")).get("cells", [])
    except (OSError, ValueError):
        return None
    for cell in cells:
        if cell.get("cell_type") != "markdown":
            continue
        src = cell.get("source", "")
        text = "".join(src) if isinstance(src, list) else str(src)
        for line in text.splitlines():
            if line.strip():
                return line.strip().lstrip("#").strip() or None
        return None
    return None


def notebook_title(stem: str, search: list[Path]) -> str:
    """The title of notebook ``stem`` from the first folder in ``search`` that holds ``<stem>.ipynb``;
    the stem itself when none does.

    Introduced in notebooks/10_explorer.ipynb.
    """
    for folder in search:
        title = _first_title(Path(folder) / f"{stem}.ipynb")
        if title:
            return title
    return stem


def _folder_descriptions(folder: Path) -> dict[str, str]:
    """Optional ``descriptions.json`` (``{file name: one line}``) a notebook may write next to its files."""
    path = folder / "descriptions.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def describe(stem: str, filename: str, title: str, *layers: dict[str, str]) -> str:
    """One line for ``results/<stem>/<filename>``: the first of ``layers`` (most specific first)
    with a key ``"<stem>/<filename>"`` or ``filename``, else "<kind> from <notebook title>".

    Introduced in notebooks/10_explorer.ipynb.
    """
    for layer in layers:
        for key in (f"{stem}/{filename}", filename):
            if key in layer:
                return layer[key]
    kind = KINDS.get(Path(filename).suffix.lower(), "file")
    return f"{kind} from {title}"


def _href(target: Path, base: Path) -> str:
    rel = os.path.relpath(target, base)
    return quote(Path(rel).as_posix(), safe="/")


def _seconds(root: Path) -> dict[str, float]:
    """``{notebook: seconds}`` of the finished notebooks in ``pipeline.json``; a missing or unreadable log
    gives ``{}``; an entry without a finite number of seconds (``null``, a string) or whose status is not
    ``"ok"`` (failed, still running) is left out."""
    try:
        notebooks = json.loads((root / "pipeline.json").read_text()).get("notebooks", {})
        ok = {k: v for k, v in notebooks.items() if isinstance(v, dict) and v.get("status", "ok") == "ok"}
        return {k: float(v["seconds"]) for k, v in ok.items() if isinstance(v.get("seconds"), (int, float))
                and not isinstance(v["seconds"], bool) and math.isfinite(v["seconds"])}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return {}


_STYLE = """body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}
h2{margin-top:1.6em;border-bottom:1px solid #ddd}ul{list-style:none;padding-left:0}li{margin:.5em 0}
code{background:#f4f4f4;padding:0 .3em}img{max-width:14em;display:block;margin:.3em 0;border:1px solid #eee}
.muted{color:#777}"""


def write_index(results_root: str | Path | None = None, notebooks_html_dir: str | Path | None = None, *,
                descriptions: dict[str, str] | None = None, notebooks_dirs: list[str | Path] | None = None,
                title: str = "mlnb results", out: str | Path | None = None, thumbnails: bool = True) -> Path:
    """Write ``<results_root>/index.html`` (atomically) and return its path.

    * ``results_root``: the run's results folder (default ``mlnb.utils.results_root()``); every
      sub-folder except ``executed/`` and ``html/`` holding ``.png`` / ``.svg`` / ``.csv`` / ``.json``
      files is listed, notebook folders (``NN_slug``) first.
    * ``notebooks_html_dir``: the folder of rendered ``<NN_slug>.html`` files (default
      ``<results_root>/html``); each is linked, and a notebook without a results folder still gets
      its section.
    * ``descriptions``: extra one-liners keyed by ``"<notebook>/<file>"`` or a bare file name; they
      take precedence over a ``results/<notebook>/descriptions.json`` the notebook may write
      (``{file name: one line}``), which takes precedence over :data:`DESCRIPTIONS`. Files without a
      description get "<kind> from <notebook title>".
    * ``notebooks_dirs``: where to read notebook titles (default ``<results_root>/executed`` then the
      project's ``notebooks/``).
    * ``out``: the page to write (default ``<results_root>/index.html``); links are relative to it.

    Every name and description is HTML-escaped and every link URL-quoted.

    Introduced in notebooks/10_explorer.ipynb.
    """
    root = Path(results_root) if results_root is not None else _results_root()
    if not root.is_dir():
        raise FileNotFoundError(f"results_root {root} is not a folder: run the notebooks first "
                                f"(python -m mlnb.running.pipeline run) or pass the folder that holds their results")
    html_dir = Path(notebooks_html_dir) if notebooks_html_dir is not None else root / "html"
    out = Path(out) if out is not None else root / "index.html"
    search = [Path(p) for p in notebooks_dirs] if notebooks_dirs else [root / "executed", project_root() / "notebooks"]
    user_desc = dict(descriptions or {})
    seconds = _seconds(root)

    pages = {p.stem: p for p in sorted(html_dir.glob("*.html"))} if html_dir.is_dir() else {}
    folders = {p.name: p for p in sorted(root.iterdir())
               if p.is_dir() and p.name not in SKIP_DIRS and not p.name.startswith(".")}
    stems = sorted(set(pages) | {n for n in folders if NOTEBOOK_DIR.match(n)})
    others = sorted(n for n in folders if n not in stems)

    esc = html.escape
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}</title>",
             f"<style>{_STYLE}</style></head><body>", f"<h1>{esc(title)}</h1>",
             f"<p class=\"muted\">Results folder <code>{esc(str(root))}</code>: "
             f"{len(stems)} notebook(s).</p>"]
    for stem in stems + others:
        nb_title = notebook_title(stem, search) if stem in stems else stem
        parts.append(f"<h2 id=\"{esc(quote(stem))}\">{esc(nb_title)}</h2>")
        line = []
        if stem in pages:
            line.append(f"<a href=\"{_href(pages[stem], out.parent)}\">rendered notebook "
                        f"<code>{esc(pages[stem].name)}</code></a>")
        if stem in seconds:
            line.append(f"<span class=\"muted\">ran in {float(seconds[stem]):.1f} s</span>")
        if line:
            parts.append("<p>" + " · ".join(line) + "</p>")
        folder = folders.get(stem)
        files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in KINDS
                       and f.name != "descriptions.json" and not f.name.startswith(".")) if folder else []
        if not files:
            continue
        layers = (user_desc, _folder_descriptions(folder), DESCRIPTIONS)
        parts.append("<ul>")
        for f in files:
            href = _href(f, out.parent)
            kind = KINDS[f.suffix.lower()]
            thumb = (f"<a href=\"{href}\"><img src=\"{href}\" alt=\"{esc(f.name)}\" loading=\"lazy\"></a>"
                     if thumbnails and kind == "figure" else "")
            parts.append(f"<li>{thumb}<a href=\"{href}\"><code>{esc(stem)}/{esc(f.name)}</code></a> "
                         f"({kind}): {esc(describe(stem, f.name, nb_title, *layers))}</li>")
        parts.append("</ul>")
    parts.append("</body></html>\n")
    return atomic_write_text(out, "\n".join(parts))
