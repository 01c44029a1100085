"""MLA-LP batched against one image at a time (issue 15): the per-image speed ratio.

Three ways to solve the same linear programs (MLA-LP's L∞-minimal steps, mlnb.attacks.mla_lp):

1. ``attack``: the whole attack (Jacobians and LPs, every step) on ``n`` images in one call (one model
   pass per label for the batch, one LP per image in the same process), against the same attack called
   once per image (as the reference code attacks one image per process): seconds per image, same LPs;
2. ``lp_reference_form``: the LPs of the first step of the ``n`` images, written as the reference writes
   them (variables ``r, t``; ``|A ∪ B| + 2d`` rows, the ``|r_p| <= t`` rows explicit) and solved by HiGHS
   one image at a time, against mlnb's equivalent form (``u = r/t, s = 1/t``: ``|A ∪ B|`` rows, bounds
   instead of the ``2d`` rows) solved as one block-diagonal sparse LP for all ``n``: seconds per image and
   the largest difference of the two ``||r||_∞``;
3. ``lp_same_form``: mlnb's form one image per LP against one block-diagonal LP (what the block
   structure alone buys; ``max_step_difference`` is non-zero where an LP has several optimal vertices
   and the two solves return different ones, of the same ``||r||_∞``).

Run: ``python -m benchmarks.successors_batching --preset default`` (about a minute on 2 idle cores) or
``--preset smoke``. Prints the ratios and writes ``benchmarks/results/successors_batching_<preset>.json``.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import linprog

from benchmarks import load_workload
from benchmarks.machine import describe, load_average, machine_info
from mlnb.attacks import mla_lp
from mlnb.attacks._core import Runtime
from mlnb.attacks.deepfool import jacobian_rows
from mlnb.attacks.mla_lp import TAU_START, bce_rows, solve_steps
from mlnb.presets import get_preset
from mlnb.utils import project_root, write_json


def reference_form(grad: np.ndarray, rhs: np.ndarray) -> tuple[float, float]:
    """The LP as the reference states it, for one image: min t s.t. grad r <= rhs, -t <= r <= t, t <= 1,
    |r| <= 1, with HiGHS's interior-point method (the reference uses MOSEK's; the fastest of HiGHS's methods on
    this form). ``grad`` ``(K, d)``, ``rhs`` ``(K,)``. Returns ``(seconds, ||r||_∞)``."""
    K, d = grad.shape
    eye = sp.identity(d, format="csr")
    col = sp.csr_matrix(np.ones((d, 1)))
    M = sp.vstack([sp.hstack([sp.csr_matrix(grad), sp.csr_matrix((K, 1))]), sp.hstack([eye, -col]),
                   sp.hstack([-eye, -col])], format="csc")
    t0 = time.perf_counter()
    res = linprog(np.r_[np.zeros(d), 1.0], A_ub=M, b_ub=np.r_[rhs, np.zeros(2 * d)],
                  bounds=np.c_[np.r_[np.full(d, -1.0), 0.0], np.r_[np.full(d, 1.0), 1.0]], method="highs-ipm")
    dt = time.perf_counter() - t0
    return dt, (float(np.abs(res.x[:d]).max()) if res.status == 0 else float("nan"))


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
    preset = get_preset(args.preset)
    dev = torch.device("cpu")
    w = load_workload(preset, n, dev, synthetic=args.synthetic)
    load_before = load_average()

    # 1. the whole attack (after a warm-up call: first calls pay one-time costs)
    mla_lp(w.model, *w.rows(slice(0, 1)), max_iter=1, progress=False)
    t0 = time.perf_counter()
    batched = mla_lp(w.model, w.x, w.y, w.A, w.B, max_iter=max_iter, progress=False)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = [mla_lp(w.model, *w.rows(slice(i, i + 1)), max_iter=max_iter, progress=False, lp_batch=1)
              for i in range(n)]
    t_single = time.perf_counter() - t0
    # alone, an image's convolutions may round its last bits differently (mlnb.attacks' docstring); over the
    # steps that can move an image that ends near the threshold to the other side
    n_differ = sum(int(s.success[0] != batched.success[i]) for i, s in enumerate(single))

    # 2 and 3. the LPs of the first step
    rt = Runtime(w.model)
    cols = (w.A | w.B).any(0).nonzero().flatten().tolist()
    logits, J = jacobian_rows(rt, w.x, cols)
    y_star = w.y ^ w.A
    grad, rhs = bce_rows(logits, J, y_star, torch.full(w.y.shape, TAU_START, dtype=torch.float64))
    rows = w.A | w.B
    t0 = time.perf_counter()
    r_block, failed = solve_steps(grad, rhs, rows, None)
    t_block = time.perf_counter() - t0
    t0 = time.perf_counter()
    r_one = torch.cat([solve_steps(grad[i:i + 1], rhs[i:i + 1], rows[i:i + 1], 1)[0] for i in range(n)])
    t_one = time.perf_counter() - t0
    ref_t, diffs = [], []
    for i in range(n_ref):
        k = rows[i].numpy()
        dt, linf = reference_form(grad[i].numpy()[k], rhs[i].numpy()[k])
        ref_t.append(dt)
        diffs.append(abs(linf - float(r_block[i].abs().max())))

    out = {
        "preset": args.preset, "n_images": n, "max_iter": max_iter, "workload": w.description,
        "attack": {"batched_s_per_image": t_batched / n, "one_at_a_time_s_per_image": t_single / n,
                   "ratio": t_single / t_batched, "n_success_differ": n_differ,
                   "success_rate": float(batched.success.float().mean())},
        "lp_reference_form": {"reference_s_per_image": float(np.mean(ref_t)), "n_reference": n_ref,
                              "mlnb_block_s_per_image": t_block / n, "ratio": float(np.mean(ref_t)) / (t_block / n),
                              "max_linf_difference": float(np.nanmax(diffs)) if diffs else float("nan")},
        "lp_same_form": {"one_lp_per_image_s": t_one / n, "block_s_per_image": t_block / n, "ratio": t_one / t_block,
                         "max_step_difference": float((r_one - r_block).abs().max()), "n_failed": int(failed.sum())},
        "machine": machine_info(dev), "loadavg_before": load_before, "loadavg_after": load_average(),
    }
    print(f"MLA-LP batching, {w.description}; {describe(out['machine'])}; load {load_before} -> {out['loadavg_after']}")
    a, r, s = out["attack"], out["lp_reference_form"], out["lp_same_form"]
    print(f"  whole attack ({max_iter} steps): batched {a['batched_s_per_image']:.3f} s/image, one image at a time "
          f"{a['one_at_a_time_s_per_image']:.3f} s/image: ratio {a['ratio']:.2f}x ({n_differ} of {n} images with "
          f"another outcome alone)")
    print(f"  first-step LPs, reference form one image at a time vs mlnb's block-diagonal form: "
          f"{r['reference_s_per_image']:.3f} vs {r['mlnb_block_s_per_image']:.4f} s/image: ratio {r['ratio']:.1f}x "
          f"(max |Δ ||r||_∞| {r['max_linf_difference']:.1e})")
    print(f"  first-step LPs, mlnb's form, one LP per image vs one block-diagonal LP: ratio {s['ratio']:.2f}x "
          f"(max |Δr| {s['max_step_difference']:.1e})")
    print(f"  acceptance (>= 5x per image against solving the same LPs one image at a time): "
          f"{'met' if r['ratio'] >= 5 else 'not met'} against the reference's LP ({r['ratio']:.1f}x); "
          f"the block structure alone gives {s['ratio']:.2f}x")
    write_json(project_root() / "benchmarks" / "results" / f"successors_batching_{args.preset}.json", out)
    return out


if __name__ == "__main__":
    main()
