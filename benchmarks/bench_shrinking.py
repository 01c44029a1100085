"""Early abort + batch shrinking against a fixed budget on a mixed-difficulty batch.

The batch mixes easy (hide one label), medium (random case) and hard (extreme case: flip every
label) targets, so its images finish their λ schedules at very different times. Two runs of the
same attack with the same parameters:

* ``shrink``: mlnb as it is: an image leaves the active batch once its ``n_search`` λ runs are over
  (early abort ends a run that stalls), so the cost falls as images finish;
* ``fixed``: the same per-image schedules, but finished images stay in the batch (their results are
  written and frozen) and the batch runs the full ``n_search x max_iter`` steps, as implementations
  that stop only when the whole batch is done.

Both give identical per-image results (checked), so the success rate is equal by construction; the
difference is the time to result. Run alone: ``python -m benchmarks.bench_shrinking --preset smoke``.
"""
from __future__ import annotations

import argparse
from contextlib import contextmanager

import torch

from benchmarks import load_workload, median, timed
from mlnb import attack_search, attacks
from mlnb.presets import get_preset
from mlnb.utils import resolve_device

MIXED = ("hide_single", "random", "extreme")
ATTACKS = ("ml_cw", "rank2")


class CountingModel(torch.nn.Module):
    """Wraps a model and counts the images it is called on (one count per forward)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model, self.images = model, 0

    def forward(self, x):
        self.images += int(x.shape[0])
        return self.model(x)


@contextmanager
def fixed_budget():
    """Keep finished images in the active batch of :func:`mlnb.attack_search.optimize`: their results
    are written as usual (and no longer change), but they are still computed every step."""
    flush = attack_search._flush

    def keep_all(S, out, finished):
        flush(S, out, finished)  # writes the finished rows' results into ``out``
        # a finished row is never live again (also the rows that start in the target state)
        S["s"] = torch.where(finished, torch.full_like(S["s"], 2 ** 62), S["s"])
        return S

    attack_search._flush = keep_all
    try:
        yield
    finally:
        attack_search._flush = flush


def _identical(a, b) -> bool:
    same = all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("success", "n_satisfied", "iterations"))
    return same and torch.allclose(a.x_adv, b.x_adv, atol=1e-5, rtol=0) and torch.allclose(
        a.param.nan_to_num(-1.0), b.param.nan_to_num(-1.0))


def run(preset, n: int, search: tuple[int, int], repeats: int, device: torch.device, *, synthetic: bool = False,
        log=print) -> dict:
    """Time both modes, interleaved, median of ``repeats``; returns the JSON section."""
    wl = load_workload(preset, n, device, synthetic=synthetic, strategies=MIXED)
    counting = CountingModel(wl.model).eval()
    n_search, max_iter = search
    out = {"workload": f"{wl.description}; n_search {n_search} x max_iter {max_iter}, early abort on",
           "batch": n, "n_search": n_search, "max_iter": max_iter, "attacks": {}}
    for name in ATTACKS:
        params = {**preset.attack_params(name), "n_search": n_search, "max_iter": max_iter}
        times, counts, results = {"shrink": [], "fixed": []}, {}, {}
        attacks.ATTACKS[name](wl.model, wl.x, wl.y, wl.A, wl.B, progress=False,
                              **{**params, "n_search": 1, "max_iter": 2})  # warm-up
        for r in range(repeats):
            for mode in (("shrink", "fixed") if r % 2 == 0 else ("fixed", "shrink")):
                counting.images = 0

                def call():
                    return attacks.ATTACKS[name](counting, wl.x, wl.y, wl.A, wl.B, progress=False, **params)

                if mode == "fixed":
                    with fixed_budget():
                        t, res = timed(call, device)
                else:
                    t, res = timed(call, device)
                times[mode].append(t)
                counts[mode], results[mode] = counting.images, res
        a, b = results["shrink"], results["fixed"]
        row = {"shrink_s": median(times["shrink"]), "fixed_s": median(times["fixed"]),
               "image_steps_shrink": counts["shrink"], "image_steps_fixed": counts["fixed"],
               "success_shrink": float(a.success.float().mean()), "success_fixed": float(b.success.float().mean()),
               "identical": _identical(a, b), "max_abs_diff_x_adv": float((a.x_adv - b.x_adv).abs().max()),
               "iterations_min_median_max": [int(a.iterations.min()), int(a.iterations.median()),
                                             int(a.iterations.max())],
               "shrink_seconds": times["shrink"], "fixed_seconds": times["fixed"]}
        row["speedup"] = row["fixed_s"] / row["shrink_s"]
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
    args = ap.parse_args(argv)
    return run(get_preset(args.preset), args.n, (2, 6), 1, resolve_device(args.device), synthetic=args.synthetic)


if __name__ == "__main__":
    main()
