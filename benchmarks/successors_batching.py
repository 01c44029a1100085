"""MLA-LP batched against one image at a time (issue 15): the per-image speed ratio.

Three measurements, each on the linear programs of a real MLA-LP run (``mlnb.attacks.mla_lp``: the
L∞-minimal steps of every iteration, recorded as the batched attack solves them):

1. ``same_lps``: the recorded LPs solved again, step by step, (a) all images of a step at once by the
   batched dual simplex (``solver="simplex"``, the default: :func:`mlnb.attacks.linf_lp.simplex_steps`,
   certified, HiGHS for the rest), (b) one image at a time by HiGHS (``solver="highs"``, ``linprog``, one LP
   per call, as the reference solves one LP per image with MOSEK) and (c) one image at a time by the
   simplex: seconds per LP, the ratios, and the largest relative difference of the optimal ``||r||_∞``;
2. ``attack``: the whole attack (Jacobians and LPs, every step) on ``n`` images in one call against the same
   attack called once per image, with either solver: seconds per image;
3. ``lp_reference_form``: the first step's LPs written as the reference writes them (variables ``r, t``;
   ``|A ∪ B| + 2d`` rows, ``|r_p| <= t`` explicit) and solved by HiGHS one image at a time.

Run: ``python -m benchmarks.successors_batching --preset default`` (about a minute on 2 idle cores) or
``--preset smoke``. Prints the ratios and writes ``benchmarks/results/successors_batching_<preset>.json``.
"""
from __future__ import annotations

import argparse
import importlib
import time

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import linprog

from benchmarks import load_workload
from benchmarks.machine import describe, load_average, machine_info
from mlnb.attacks import mla_lp
from mlnb.attacks.linf_lp import prepare, solve_steps
from mlnb.presets import get_preset
from mlnb.utils import project_root, write_json


def reference_form(G: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """The LP as the reference states it, for one image: min t s.t. G r <= b, -t <= r <= t, t <= 1,
    |r| <= 1, with HiGHS's interior-point method (the reference uses MOSEK's; the fastest of HiGHS's methods on
    this form). ``G`` ``(K, d)``, ``b`` ``(K,)``. Returns ``(seconds, ||r||_∞)``."""
    K, d = G.shape
    eye = sp.identity(d, format="csr")
    col = sp.csr_matrix(np.ones((d, 1)))
    M = sp.vstack([sp.hstack([sp.csr_matrix(G), sp.csr_matrix((K, 1))]), sp.hstack([eye, -col]),
                   sp.hstack([-eye, -col])], format="csc")
    t0 = time.perf_counter()
    res = linprog(np.r_[np.zeros(d), 1.0], A_ub=M, b_ub=np.r_[b, np.zeros(2 * d)],
                  bounds=np.c_[np.r_[np.full(d, -1.0), 0.0], np.r_[np.full(d, 1.0), 1.0]], method="highs-ipm")
    dt = time.perf_counter() - t0
    return dt, (float(np.abs(res.x[:d]).max()) if res.status == 0 else float("nan"))


def record_lps(w, max_iter: int):
    """Run MLA-LP batched and keep the LPs of every step: ``[(grad, rhs, rows), ...]`` and the result."""
    module = importlib.import_module("mlnb.attacks.mla_lp")  # the module (mlnb.attacks.mla_lp is also the function)
    steps, solve = [], module.solve_steps

    def recording(grad, rhs, rows, solver):
        steps.append((grad.clone(), rhs.clone(), rows.clone()))
        return solve(grad, rhs, rows, solver)

    module.solve_steps = recording
    try:
        res = mla_lp(w.model, w.x, w.y, w.A, w.B, max_iter=max_iter, progress=False)
    finally:
        module.solve_steps = solve
    return steps, res


def same_lps(steps) -> dict:
    """Solve the recorded LPs again: batched simplex, HiGHS one at a time, simplex one at a time."""
    t = {"batched_simplex": 0.0, "highs_one_at_a_time": 0.0, "simplex_one_at_a_time": 0.0}
    n_lps, worst, n_highs = 0, 0.0, 0
    for grad, rhs, rows in steps:
        n = grad.shape[0]
        n_lps += int(prepare(grad, rhs, rows)[2].sum())
        t0 = time.perf_counter()
        batched = solve_steps(grad, rhs, rows, "simplex")
        t["batched_simplex"] += time.perf_counter() - t0
        n_highs += int(batched.by_highs.sum())
        t0 = time.perf_counter()
        highs = [solve_steps(grad[i:i + 1], rhs[i:i + 1], rows[i:i + 1], "highs") for i in range(n)]
        t["highs_one_at_a_time"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(n):
            solve_steps(grad[i:i + 1], rhs[i:i + 1], rows[i:i + 1], "simplex")
        t["simplex_one_at_a_time"] += time.perf_counter() - t0
        t_b = batched.step.abs().amax(1)
        t_h = torch.cat([h.step.abs().amax(1) for h in highs])
        worst = max(worst, float(((t_b - t_h).abs() / t_h.clamp(min=1e-12)).max()))
    per = {k: v / max(n_lps, 1) for k, v in t.items()}
    return {"n_steps": len(steps), "n_lps": n_lps, "s_per_lp": per, "n_simplex_left_to_highs": n_highs,
            "ratio_vs_highs": per["highs_one_at_a_time"] / per["batched_simplex"],
            "ratio_vs_simplex_alone": per["simplex_one_at_a_time"] / per["batched_simplex"],
            "max_rel_linf_difference": worst}


def whole_attack(w, n: int, max_iter: int) -> dict:
    """The attack on the batch in one call against one call per image, with each solver."""
    out = {}
    for solver in ("simplex", "highs"):
        t0 = time.perf_counter()
        batched = mla_lp(w.model, w.x, w.y, w.A, w.B, max_iter=max_iter, progress=False, solver=solver)
        out[f"batched_{solver}_s_per_image"] = (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        single = [mla_lp(w.model, *w.rows(slice(i, i + 1)), max_iter=max_iter, progress=False, solver=solver)
                  for i in range(n)]
        out[f"one_at_a_time_{solver}_s_per_image"] = (time.perf_counter() - t0) / n
        # alone, an image's convolutions may round its last bits differently (mlnb.attacks' docstring); over the
        # steps that can lead an LP with several optima to another vertex and the image along another path
        out[f"n_success_differ_{solver}"] = sum(int(s.success[0] != batched.success[i]) for i, s in enumerate(single))
        out[f"success_rate_{solver}"] = float(batched.success.float().mean())
    out["ratio"] = out["one_at_a_time_highs_s_per_image"] / out["batched_simplex_s_per_image"]
    out["ratio_same_solver"] = out["one_at_a_time_simplex_s_per_image"] / out["batched_simplex_s_per_image"]
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--n-images", type=int, default=None, help="images (default: 24, smoke: 4)")
    ap.add_argument("--n-reference", type=int, default=None, help="images solved in the reference form (default: 4)")
    ap.add_argument("--max-iter", type=int, default=None, help="MLA-LP steps (default: 10, smoke: 3)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--synthetic", action="store_true", help="random images and weights (no data, no training)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    smoke = args.preset == "smoke"
    n = args.n_images or (4 if smoke else 24)
    n_ref = min(n, args.n_reference or (1 if smoke else 4))
    max_iter = args.max_iter or (3 if smoke else 10)
    w = load_workload(get_preset(args.preset), n, torch.device("cpu"), synthetic=args.synthetic)
    load_before = load_average()
    mla_lp(w.model, *w.rows(slice(0, 1)), max_iter=1, progress=False)  # warm-up: first calls pay one-time costs
    steps, _ = record_lps(w, max_iter)
    lps = same_lps(steps)
    attack = whole_attack(w, n, max_iter)
    G, b, todo, _ = prepare(*steps[0])
    ref_t, ref_diff = [], []
    first = solve_steps(*steps[0], "simplex").step.abs().amax(1)
    for i in todo.nonzero().flatten()[:n_ref].tolist():
        keep = (G[i] != 0).any(1)
        dt, linf = reference_form(G[i][keep].numpy(), b[i][keep].numpy())
        ref_t.append(dt)
        ref_diff.append(abs(linf - float(first[i])))
    out = {
        "preset": args.preset, "n_images": n, "max_iter": max_iter, "workload": w.description,
        "same_lps": lps, "attack": attack,
        "lp_reference_form": {"reference_s_per_lp": float(np.mean(ref_t)) if ref_t else float("nan"),
                              "n_reference": len(ref_t),
                              "max_linf_difference": float(np.nanmax(ref_diff)) if ref_diff else float("nan")},
        "machine": machine_info(torch.device("cpu")), "loadavg_before": load_before, "loadavg_after": load_average(),
    }
    s, a, r = lps["s_per_lp"], attack, out["lp_reference_form"]
    print(f"MLA-LP batching, {w.description}; {describe(out['machine'])}; load {load_before} -> {out['loadavg_after']}")
    print(f"  the same LPs ({lps['n_lps']} LPs of {lps['n_steps']} steps): batched simplex {1e3 * s['batched_simplex']:.2f} ms"
          f"/LP, HiGHS one image at a time {1e3 * s['highs_one_at_a_time']:.2f} ms/LP: ratio {lps['ratio_vs_highs']:.1f}x; "
          f"the simplex one image at a time {1e3 * s['simplex_one_at_a_time']:.2f} ms/LP: ratio "
          f"{lps['ratio_vs_simplex_alone']:.1f}x (max relative |Δ ||r||_∞| {lps['max_rel_linf_difference']:.1e}; "
          f"{lps['n_simplex_left_to_highs']} LPs left to HiGHS)")
    print(f"  whole attack ({max_iter} steps): batched (simplex) {a['batched_simplex_s_per_image']:.3f} s/image; one image "
          f"at a time {a['one_at_a_time_highs_s_per_image']:.3f} s/image with HiGHS (ratio {a['ratio']:.1f}x), "
          f"{a['one_at_a_time_simplex_s_per_image']:.3f} with the simplex ({a['ratio_same_solver']:.1f}x); batched HiGHS "
          f"{a['batched_highs_s_per_image']:.3f} s/image")
    print(f"  the reference's LP form (|A ∪ B| + 2d rows, HiGHS IPM) one image at a time: "
          f"{1e3 * r['reference_s_per_lp']:.1f} ms/LP (max |Δ ||r||_∞| {r['max_linf_difference']:.1e})")
    print(f"  acceptance (batched >= 5x per image against solving the same LPs one image at a time): "
          f"{'met' if lps['ratio_vs_highs'] >= 5 else 'not met'} for the LPs ({lps['ratio_vs_highs']:.1f}x against "
          f"HiGHS per image); the whole attack, Jacobians included, {a['ratio']:.1f}x")
    write_json(project_root() / "benchmarks" / "results" / f"successors_batching_{args.preset}.json", out)
    return out


if __name__ == "__main__":
    main()
