"""The README's results section, rendered from one recorded run so that the text says only what was measured.

    python -m mlnb.running.readme_results --results results --snapshot docs/results-default.json --readme README.md

reads a finished ``make run`` (``results/``: ``pipeline.json``, each notebook's ``metrics.json`` and
tables), writes the numbers the README quotes into a small JSON **snapshot** (with the run's
environment), and rewrites the README between ``<!-- results:begin -->`` and ``<!-- results:end -->``
from that snapshot. ``tests/test_readme_results.py`` renders the committed snapshot and compares it
with README.md (the text cannot drift from the numbers), and a slow test compares the snapshot with
a fresh run (the numbers cannot drift from the code).

A command-line tool run after ``make run``, not called from a notebook.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from ..presets import ROW_TITLES

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
QUOTED_COLUMNS = (  # the columns of table.csv the README quotes
    "Success", "Hamming(A)", "Hamming(B)", "RMSD", "Clean")


def _metrics(results: Path, notebook: str) -> dict:
    return json.loads((results / notebook / "metrics.json").read_text())["metrics"]


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def collect(results: str | Path) -> dict:
    """The numbers the README quotes, from a finished run under ``results`` (a JSON-able dict)."""
    results = Path(results)
    pipeline = json.loads((results / "pipeline.json").read_text())
    nb = pipeline["notebooks"]
    m01 = _metrics(results, "01_target_model")
    env = json.loads((results / "01_target_model" / "metrics.json").read_text())["environment"]
    tables = {}
    for notebook, name in (("06_general_attacks", "table4_ci"), ("07_label_specified", "table5_ci")):
        if (results / notebook / f"{name}.csv").is_file():
            tables[name] = [{k: r[k] for k in ("strategy", "attack", *QUOTED_COLUMNS)}
                            for r in _rows(results / notebook / f"{name}.csv")]
    claims = {name: [{"claim": r["claim"], "state": r["state"]} for r in _rows(results / notebook / f"{name}.csv")]
              for notebook, name in (("06_general_attacks", "claims4"), ("07_label_specified", "claims5"))
              if (results / notebook / f"{name}.csv").is_file()}
    m08, m09 = (_metrics(results, n) if (results / n / "metrics.json").is_file() else None
                for n in ("08_case_study", "09_jpeg_defense"))
    t4 = _metrics(results, "06_general_attacks")
    random = {a: {"flipped_A": round(1 - float(v["Hamming(A)"]), 3), "changed_B": round(float(v["Hamming(B)"]), 3)}
              for a, v in t4["table4"]["random"].items() if a in ("ml_cw", "rank2")}
    later = {n: _metrics(results, n) if (results / n / "metrics.json").is_file() else None
             for n in ("11_transfer", "12_robust_training", "13_successors")}
    return {
        **_later_notebooks(*later.values()),
        "environment": env,
        "minutes_total": round(sum(v.get("seconds") or 0 for v in nb.values()) / 60, 1),  # null: did not finish
        "seconds": {k: v.get("seconds") for k, v in nb.items()},
        "status": {k: v.get("status") for k, v in nb.items()},
        "table3": {k: round(float(m01[k]), 4) for k in ("map", "label_map", "hamming", "macro_f1", "micro_f1",
                                                           "ranking_loss")},
        "tables": tables, "claims": claims, "random_case": random, "n_general": t4["n_images"],
        "fig2": None if m08 is None else {"images": m08["n_images"], "both_success": m08["both_success"],
                                          "rank2_wins_both_success": m08["rank2_higher_variance_both_success"]},
        "fig3": None if m09 is None else {"success_png": round(m09["success_png"], 2), "success_jpeg": round(m09["success_jpeg"], 2),
                 "overlap_png": round(m09["mean_overlap_png"], 2), "overlap_jpeg": round(m09["mean_overlap_jpeg"], 2),
                 "no_defense": round(m09["ml_cw_success_no_defense"], 2),
                 "after_jpeg_plain": round(m09["ml_cw_success_after_jpeg_plain"], 2),
                 "after_jpeg_adaptive": round(m09["ml_cw_success_after_jpeg_adaptive"], 2),
                 "rmsd_plain": round(m09["rmsd_plain"], 2), "rmsd_adaptive": round(m09["rmsd_adaptive"], 2)},
    }


def _later_notebooks(m11: dict | None, m12: dict | None, m13: dict | None) -> dict:
    """What the README quotes of notebooks 11-13 (None where a notebook did not finish)."""
    out = {"transfer": None, "robust": None, "successors": None}
    if m11 is not None:  # the findings in numbers; the claims by their states
        out["transfer"] = [f for f in m11["findings"] if not f.startswith("Claim (")]
        out["transfer"].append("claims: " + ", ".join(f"{s} {n}" for s, n in m11["claims_states"].items() if n))
    if m12 is not None:
        closest = [c["closest ratio L2 / radius of a changed label"] for c in m12["check"].values()
                   if c.get("closest ratio L2 / radius of a changed label") is not None]
        out["robust"] = {"map": [round(m12["map_standard"], 3), round(m12["map_robust"], 3)],
                         "success": [round(m12["mean_success_standard"], 2), round(m12["mean_success_robust"], 2)],
                         "bounded": [round(m12["mean_bounded_success_standard"], 2),
                                     round(m12["mean_bounded_success_robust"], 2)], "bound": m12["rmsd_bound"],
                         "violations": m12["check_violations"],
                         "checked": sum(c["images"] for c in m12["check"].values()),
                         "closest": round(min(closest), 1) if closest else None}
    if m13 is not None:
        v = m13["mla_lp_vs_ml_dp"]
        out["successors"] = {"n": m13["n_images"], "mla_lp": v["mla_lp_success"], "ml_dp": v["ml_dp_success"],
                             "both": v["both"], "linf": [round(v["mla_lp_linf_both"], 4), round(v["ml_dp_linf_both"], 4)],
                             "topk": {k: round(r[next(c for c in r if c.endswith("success"))], 2)
                                      for k, r in m13["topk"].items()}}
    return out


def _later_lines(snap: dict) -> list[str]:
    lines = []
    if snap.get("transfer"):
        lines += ["- **Transfer (`11`)**, crafted on surrogates, judged on the target:",
                  *[f"  - {f}" for f in snap["transfer"]]]
    r = snap.get("robust")
    if r:
        lines.append(f"- **Robust training (`12`)**: adversarial fine-tuning on Eq. 12 costs clean mAP {r['map'][0]:.3f} -> "
                     f"{r['map'][1]:.3f}; mean attack success {r['success'][0]:.2f} -> {r['success'][1]:.2f} "
                     f"({r['bounded'][0]:.2f} -> {r['bounded'][1]:.2f} within RMSD {r['bound']}); ML-CW through the "
                     f"smoothing changed no certified label inside its radius ({r['violations']} violations on "
                     f"{r['checked']} attacked images" + (f"; the closest changed label moved {r['closest']}x its "
                                                          f"certified radius" if r["closest"] is not None else "") + ").")
    s = snap.get("successors")
    if s:
        lines.append(f"- **Successors (`13`)**, {s['n']} random-case images: MLA-LP meets {s['mla_lp']}, ML-DP {s['ml_dp']}; "
                     f"mean L∞ on the {s['both']} both meet {s['linf'][0]} vs {s['linf'][1]}; top-k targeted success "
                     + ", ".join(f"{k} {v:.2f}" for k, v in s["topk"].items()) + ".")
    return lines


def _table(rows: list[dict]) -> list[str]:
    out = ["| case | attack | " + " | ".join(QUOTED_COLUMNS) + " |", "|---|---|" + "---|" * len(QUOTED_COLUMNS)]
    for r in rows:
        out.append(f"| {r['strategy']} | {ROW_TITLES.get(r['attack'], r['attack'])} | "
                   + " | ".join(r[c] for c in QUOTED_COLUMNS) + " |")
    return out


def _claims(rows: list[dict]) -> list[str]:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    out = ["states: " + ", ".join(f"{s} {n}" for s, n in counts.items()), ""]
    out += [f"- *{r['state']}*: {r['claim']}" for r in rows]
    return out


def render(snap: dict) -> str:
    """The README section (without the markers) for a snapshot made by :func:`collect`."""
    env, t3, f2, f3 = snap["environment"], snap["table3"], snap["fig2"], snap["fig3"]
    dummy2 = {"images": 0, "both_success": 0, "rank2_wins_both_success": 0}
    dummy3 = dict.fromkeys(("success_png", "success_jpeg", "overlap_png", "overlap_jpeg", "no_defense",
                            "after_jpeg_plain", "after_jpeg_adaptive", "rmsd_plain", "rmsd_adaptive"), 0.0)
    f2_, f3_ = f2 or dummy2, f3 or dummy3
    failed = [k for k, v in snap["status"].items() if v != "ok"]
    lines = [
        f"Measured by `make run` on the default preset ({env['machine']}, {env['cpu_threads']} CPU threads, "
        f"torch {env['torch']}); every figure below is rendered from `docs/results-default.json`, the snapshot "
        f"of that run (`python -m mlnb.running.readme_results` rewrites this section from a new run; "
        f"`tests/test_readme_results.py` checks that the text and the snapshot agree).",
        "",
        f"- **Time**: {snap['minutes_total']} minutes for the {len(snap['seconds'])} notebooks on "
        f"{snap.get('conditions', 'an idle machine')}"
        + (f" ({', '.join(failed)} did not finish)" if failed else "") + f", {snap.get('models', 'the cached model reused')}; "
        + ", ".join(f"{k[:2]} {v:.0f} s" for k, v in snap["seconds"].items() if v) + ".",
        f"- **Target model (Table III, `01`)**: held-out mAP {t3['map']:.3f} (per-label mAP {t3['label_map']:.3f}), "
        f"Hamming loss {t3['hamming']:.3f}, macro/micro-F1 {t3['macro_f1']:.2f}/{t3['micro_f1']:.2f}, ranking loss "
        f"{t3['ranking_loss']:.3f} (the paper's Inception-v3 on VOC 2007: 0.924 mAP, 0.050 Hamming).",
        "",
        f"- **The issue-11 bar on {snap['n_general']} random-case images (`06`)**: the faithful ML-CW flips "
        f"{snap['random_case']['ml_cw']['flipped_A']:.1%} of A and changes {snap['random_case']['ml_cw']['changed_B']:.1%} "
        f"of B (bar: at least 90% and at most 2%); Rank II flips {snap['random_case']['rank2']['flipped_A']:.1%} "
        f"and changes {snap['random_case']['rank2']['changed_B']:.1%}: its loss (Eq. 11) orders the labels but "
        "does not place them on either side of 0.5, so a kept label may cross the threshold while every ranking "
        "constraint holds (notebook 05 counts those images).",
        "",
        "**Table IV (`06`)**, 95% bootstrap intervals over images; the six paper rows run the paper's forms, the "
        "last three `mlnb`'s (RMSD over perturbed images; `Clean` = clean-image fallbacks):",
        "",
        *_table(snap["tables"]["table4_ci"]),
        "",
        *(["**Table V (`07`)**:", "", *_table(snap["tables"]["table5_ci"]), ""] if "table5_ci" in snap["tables"] else []),
        "**Claims of Sec. IV-F (`06`)**, decided by paired bootstrap: " + _claims(snap["claims"]["claims4"])[0],
        "",
        *_claims(snap["claims"]["claims4"])[2:],
        "",
        *(["**Claims of Sec. IV-G (`07`)**: " + _claims(snap["claims"]["claims5"])[0], "",
           *_claims(snap["claims"]["claims5"])[2:], ""] if "claims5" in snap["claims"] else []),
        f"- **Fig. 2 (`08`)**: both ML-CW and Rank II succeed on {f2_['both_success']} of {f2_['images']} images; on "
        f"{f2_['rank2_wins_both_success']} of those Rank II spreads the labels' probabilities more than ML-CW.",
        f"- **Fig. 3 (`09`)**: JPEG moves the adversarial histograms towards the originals (mean overlap "
        f"{f3_['overlap_png']:.2f} -> {f3_['overlap_jpeg']:.2f}) and cuts attack success from {f3_['success_png']:.2f} "
        f"to {f3_['success_jpeg']:.2f}; plain ML-CW {f3_['no_defense']:.2f} without defense, {f3_['after_jpeg_plain']:.2f} "
        f"after JPEG; an adaptive attacker (ML-CW through JPEG by BPDA) gets {f3_['after_jpeg_adaptive']:.2f} back at "
        f"RMSD {f3_['rmsd_adaptive']:.2f} (plain {f3_['rmsd_plain']:.2f}).",
    ]
    lines += _later_lines(snap)
    if f2 is None:
        lines = [ln for ln in lines if not ln.startswith("- **Fig. 2")]
    if f3 is None:
        lines = [ln for ln in lines if not ln.startswith("- **Fig. 3")]
    return "\n".join(lines).rstrip("\n") + "\n"


def readme_section(readme_text: str) -> str:
    """The text between the markers of ``readme_text``; ``ValueError`` if a marker is missing or
    :data:`END` comes only before :data:`BEGIN`."""
    if BEGIN not in readme_text or END not in readme_text:
        raise ValueError(f"README lacks the markers {BEGIN} ... {END}: add them around the results section")
    after = readme_text.split(BEGIN, 1)[1]
    if END not in after:
        raise ValueError(f"README has the marker {END} before {BEGIN} and none after it: put {BEGIN} above "
                         f"the results section and {END} below it")
    return after.split(END, 1)[0].strip("\n") + "\n"


def write_section(readme: Path, text: str) -> None:
    from ..utils import atomic_write_text

    old = readme.read_text()
    readme_section(old)  # check the markers
    head, rest = old.split(BEGIN, 1)
    atomic_write_text(readme, head + BEGIN + "\n" + text + END + rest.split(END, 1)[1])


def main(argv: list[str] | None = None) -> int:
    from ..utils import atomic_write_text

    ap = argparse.ArgumentParser(prog="python -m mlnb.running.readme_results", description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default="results", help="a finished run's folder (default: %(default)s)")
    ap.add_argument("--snapshot", default="docs/results-default.json")
    ap.add_argument("--readme", default="README.md")
    ap.add_argument("--conditions", default="an idle machine", help="what else ran on the machine meanwhile")
    ap.add_argument("--models", default="the cached model reused", help="whether the run trained its models")
    args = ap.parse_args(argv)
    readme = Path(args.readme)
    if not readme.is_file():
        raise FileNotFoundError(f"README {readme} not found: pass --readme with the README to rewrite")
    readme_section(readme.read_text())  # check the markers before writing anything
    snap = {**collect(args.results), "conditions": args.conditions, "models": args.models}
    atomic_write_text(Path(args.snapshot), json.dumps(snap, indent=1, ensure_ascii=False) + "\n")
    write_section(readme, render(snap))
    print(f"snapshot {args.snapshot} and {args.readme} updated from {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
