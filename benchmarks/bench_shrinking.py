"""Early abort + batch shrinking against a fixed budget on a mixed-difficulty batch.

The batch mixes easy (hide one label: converges in a few steps, then its runs stall and abort),
medium (random case) and hard (extreme case: flip every label) targets, so its images finish their
λ schedules at very different times. Two runs of the same attack with the same parameters (early
abort on in both):

* ``shrink``: mlnb as it is: an image leaves the active batch once its ``n_search`` λ runs are over
  (early abort ends a run that stalls), so the cost falls as images finish;
* ``fixed``: ``shrink=False`` of :func:`mlnb.attacks._driver.optimize`: the same per-image schedules,
  but finished images stay in the batch (frozen) until the batch's slowest image is done, as
  implementations that stop only when the whole batch is done.

The image-forwards counted by a wrapper around the model are load-independent; the wall times are
medians of interleaved repeats (the speed-up is the median of each repeat's fixed / shrink ratio).
The active batch size at the quartiles of the call shows the finished images leaving it.

Both give identical per-image results (checked), so the success rate is equal by construction; the
difference is the time to result. Run alone: ``python -m benchmarks.bench_shrinking --preset smoke``.
"""
from __future__ import annotations

import argparse
import torch

from benchmarks import fixed_budget, load_workload, median, timed
from mlnb import attacks
from mlnb.presets import get_preset
from mlnb.utils import resolve_device

MIXED = ("hide_single", "hide_single", "random", "extreme")  # half easy, a quarter medium, a quarter hard
ATTACKS = ("ml_cw", "rank2")


class CountingModel(torch.nn.Module):
    """Wraps a model and records the batch size of every call (image-forwards are load-independent)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model, self.sizes = model, []

    @property
    def images(self) -> int:
        return sum(self.sizes)

    def forward(self, x):
        self.sizes.append(int(x.shape[0]))
        return self.model(x)


def _identical(a, b) -> bool:
    same = all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("success", "n_satisfied", "iterations"))
    return same and torch.allclose(a.x_adv, b.x_adv, atol=1e-5, rtol=0) and torch.allclose(
        a.param.nan_to_num(-1.0), b.param.nan_to_num(-1.0))


def _quartiles(sizes: list) -> list:
    """Active batch size at 0, 25, 50, 75 and 100 % of the attack steps (first and last two calls are
    the input probe, the clean scores and the final scores)."""
    steps = sizes[2:-1] or [0]
    return [steps[min(len(steps) - 1, int(q * (len(steps) - 1)))] for q in (0, 0.25, 0.5, 0.75, 1.0)]


def run(preset, n: int, search: tuple[int, int], repeats: int, device: torch.device, *, synthetic: bool = False,
        log=print) -> dict:
    """Time both modes, interleaved, median of ``repeats`` (the speed-up: median of the repeats' ratios);
    returns the JSON section."""
    wl = load_workload(preset, n, device, synthetic=synthetic, strategies=MIXED)
    counting = CountingModel(wl.model).eval()
    n_search, max_iter = search
    out = {"workload": f"{wl.description}; n_search {n_search} x max_iter {max_iter}, early abort on",
           "batch": n, "n_search": n_search, "max_iter": max_iter, "attacks": {}}
    for name in ATTACKS:
        params = {**preset.attack_params(name), "n_search": n_search, "max_iter": max_iter}
        times, counts, results, traces = {"shrink": [], "fixed": []}, {}, {}, {}
        attacks.ATTACKS[name](wl.model, wl.x, wl.y, wl.A, wl.B, progress=False,
                              **{**params, "n_search": 1, "max_iter": 2})  # warm-up
        for r in range(repeats):
            for mode in (("shrink", "fixed") if r % 2 == 0 else ("fixed", "shrink")):
                counting.sizes = []

                def call():
                    return attacks.ATTACKS[name](counting, wl.x, wl.y, wl.A, wl.B, progress=False, **params)

                if mode == "fixed":
                    with fixed_budget():
                        t, res = timed(call, device)
                else:
                    t, res = timed(call, device)
                times[mode].append(t)
                counts[mode], results[mode], traces[mode] = counting.images, res, list(counting.sizes)
        a, b = results["shrink"], results["fixed"]
        row = {"shrink_s": median(times["shrink"]), "fixed_s": median(times["fixed"]),
               "image_steps_shrink": counts["shrink"], "image_steps_fixed": counts["fixed"],
               "success_shrink": float(a.success.float().mean()), "success_fixed": float(b.success.float().mean()),
               "identical": _identical(a, b), "max_abs_diff_x_adv": float((a.x_adv - b.x_adv).abs().max()),
               "iterations_min_median_max": [int(a.iterations.min()), int(a.iterations.median()),
                                             int(a.iterations.max())],
               "shrink_seconds": times["shrink"], "fixed_seconds": times["fixed"],
               # active batch over the call (model calls: probe, clean scores, steps..., final scores)
               "active_batch_quartiles_shrink": _quartiles(traces["shrink"]),
               "active_batch_quartiles_fixed": _quartiles(traces["fixed"])}
        # each repeat times both modes back to back: the median of their ratios is steadier than the ratio of
        # medians on a machine whose speed drifts between repeats
        row["speedup"] = median([f / s for f, s in zip(times["fixed"], times["shrink"])])
        row["work_ratio"] = counts["fixed"] / max(counts["shrink"], 1)  # load-independent
        out["attacks"][name] = row
        log(f"  {name}: shrink {row['shrink_s']:.1f}s fixed {row['fixed_s']:.1f}s ({row['speedup']:.2f}x), "
            f"identical {row['identical']}")
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="smoke")
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--synthetic", action="store_true")
    ap.add_argument("--n-search", type=int, default=3)
    ap.add_argument("--max-iter", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return run(get_preset(args.preset), args.n, (args.n_search, args.max_iter), args.repeats,
               resolve_device(args.device), synthetic=args.synthetic)


if __name__ == "__main__":
    main()
