"""The command line of the experiment runner, ``python -m mlnb.experiments`` (see :mod:`mlnb.experiments`).

Split from :mod:`mlnb.experiments`, which re-exports :func:`main` and keeps the ``-m`` entry point.

Introduced in notebooks/06_general_attacks.ipynb.
"""
from __future__ import annotations

import argparse
import ast
import os
from pathlib import Path

from .presets import ATTACK_NAMES, EXTRA_ROWS, ROW_NAMES
from .validate import check_choice

_EXTRA_HELP = {"fgs_per_image": "FGS, ε searched per image", "fg_per_image": "FG, ε searched per image",
               "ml_dp_greedy": "ML-DP linearised on logits, violated constraints only"}
ROWS_HELP = (f"comma-separated table rows (default: the paper's six, {','.join(ATTACK_NAMES)}); extra rows in "
             f"mlnb's own forms: " + ", ".join(f"{r} ({_EXTRA_HELP.get(r, a)})" for r, a in EXTRA_ROWS.items()))


def _parse_params(items: list[str]) -> dict:
    """``["ROW.KEYWORD=VALUE", ...]`` -> ``{row: {keyword: value}}`` (values parsed as Python literals)."""
    out: dict = {}
    for item in items or []:
        name, _, value = item.partition("=")
        row, _, kw = name.partition(".")
        if not kw or not _:
            raise ValueError(f"--param {item!r}: write ATTACK.KEYWORD=VALUE, e.g. ml_cw.max_iter=20")
        check_choice("attack in --param", row, ROW_NAMES)
        try:
            val = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            val = value
        out.setdefault(row, {})[kw] = val
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m mlnb.experiments``: run, write ``<out>/table.csv`` and print the table (rank 0)."""
    import pandas as pd

    from . import experiments as E
    from .utils import atomic_write_text, environment_info, param_hash, resolve_device, results_root, write_json

    ap = argparse.ArgumentParser(prog="python -m mlnb.experiments", description="\n\n".join(E.__doc__.split("\n\n")[:3]),
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Runs under `torchrun --nproc_per_node=K -m mlnb.experiments ...` "
                                        "unchanged; the results are identical. Rerunning skips finished images.")
    ap.add_argument("--preset", default="default", help="smoke, default or paper (default: %(default)s)")
    ap.add_argument("--attacks", default=",".join(ATTACK_NAMES), help=ROWS_HELP)
    ap.add_argument("--strategies", default="random,extreme", help="comma-separated: random, extreme, reduce, augment")
    ap.add_argument("--out", default=None, help="output folder (default: <results>/experiments, where <results> "
                    "is $MLNB_RESULTS or results/)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="auto, cpu or an accelerator name")
    ap.add_argument("--n-images", type=int, default=None, help="images per strategy (default: the preset's)")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="images per chunk (default: the preset's; scenario-ε rows run in one call)")
    ap.add_argument("--max-rmsd", type=float, default=None, help="RMSD bound, 0-255 scale (default: the preset's)")
    ap.add_argument("--param", action="append", default=[], metavar="ROW.KEY=VALUE",
                    help="override a row's attack parameter, e.g. ml_cw.max_iter=20 (repeatable; that row only)")
    ap.add_argument("--download", action="store_true", help="fetch PASCAL VOC when missing (paper preset)")
    ap.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else results_root() / "experiments"
    args.out = str(out)  # recorded in metrics.json as resolved
    res = E.run_experiment(args.preset, args.attacks, args.strategies, out_dir=out / "runs", seed=args.seed,
                           device=args.device, n=args.n_images, params=_parse_params(args.param),
                           batch_size=args.batch_size, download=args.download,
                           max_rmsd=... if args.max_rmsd is None else args.max_rmsd, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        atomic_write_text(out / "table.csv", res.table.to_csv())
        run_params = {k: v for k, v in vars(args).items() if k != "no_progress"}
        write_json(out / "metrics.json", {"params": run_params, "params_hash": param_hash(run_params),
                                          "seed": args.seed, "environment": environment_info(resolve_device(args.device)),
                                          "attack_set_size": res.attack_set_size})
        with pd.option_context("display.width", 160, "display.max_columns", 20):
            print(res.table.round(4).to_string())
        print(f"table written to {out / 'table.csv'}")
    return 0
