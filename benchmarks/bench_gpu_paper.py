"""The paper preset's cost on a GPU: seconds per 1000 images for ML-CW and Rank II on Inception-v3 at
299 px with the paper's budget (10 binary-search steps x 1000 iterations), with and without bf16
autocast and channels-last inputs.

Extrapolated from ``--steps`` measured Adam steps per configuration at the paper preset's attack batch
(one λ run, early abort off, after a warm-up call), so it is the cost of the full budget with no early
abort: an upper bound (early abort and batch shrinking only lower it). Speed does not depend on the
weights, so a randomly initialised Inception-v3 with VOC's 20 labels is used on random images.

    python -m benchmarks.bench_gpu_paper            # on a CUDA machine; writes benchmarks/results/gpu_paper.json

Without CUDA it prints why it skipped and writes nothing.
"""
from __future__ import annotations

import argparse

import torch

from benchmarks import median, no_early_abort, timed
from benchmarks.machine import machine_info
from mlnb import attacks
from mlnb.labels import random_case
from mlnb.presets import get_preset
from mlnb.utils import project_root, resolve_device, write_json

ATTACKS = ("ml_cw", "rank2")
N_LABELS = 20  # PASCAL VOC


def run(device: torch.device, *, steps: int = 20, batch: int | None = None, repeats: int = 2,
        image_size: int = 299, log=print) -> dict:
    """Returns the JSON section; ``{"skipped": reason}`` when ``device`` is not CUDA."""
    if device.type != "cuda":
        msg = "no CUDA device here (the paper-preset figures need a GPU)."
        log(f"  gpu paper preset: skipped, {msg}")
        return {"skipped": msg}
    from mlnb.models import build_model

    paper = get_preset("paper")
    batch = batch or paper.attack_batch_size
    torch.manual_seed(0)
    model = build_model("inception_v3", N_LABELS, pretrained=False, image_size=image_size).to(device).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, image_size, image_size, generator=gen)
    y = torch.rand(batch, N_LABELS, generator=gen) < 0.15
    y[:, 0] = True
    y[:, 1] = False
    t = random_case(y, gen)
    x, y, A, B = (v.to(device) for v in (x, y, t.A, t.B))
    budget = paper.attack_params("ml_cw")["n_search"] * paper.attack_params("ml_cw")["max_iter"]
    runs = []
    for name in ATTACKS:
        for bf16 in (False, True):
            for cl in (False, True):
                kw = {"lambda_init": 1e5, "n_search": 1, "lr": 1e-2, "check_every": steps, "channels_last": cl,
                      "autocast_dtype": torch.bfloat16 if bf16 else None}
                m = model.to(memory_format=torch.channels_last) if cl else model.to(memory_format=torch.contiguous_format)
                kw = no_early_abort(name, kw)
                attacks.ATTACKS[name](m, x, y, A, B, progress=False, max_iter=2, **kw)  # warm-up
                secs = [timed(lambda: attacks.ATTACKS[name](m, x, y, A, B, progress=False, max_iter=steps,
                                                            **kw), device)[0] for _ in range(repeats)]
                per_step = median(secs) / steps
                row = {"attack": name, "bf16": bf16, "channels_last": cl, "seconds_per_step": per_step,
                       "image_steps_per_s": batch / per_step,
                       "s_per_1000_images": per_step / batch * budget * 1000}
                runs.append(row)
                log(f"  {name} bf16={bf16} channels_last={cl}: {row['s_per_1000_images']:.0f} s / 1000 images")
    return {"batch": batch, "steps": steps, "image_size": image_size, "budget_steps_per_image": budget,
            "model": "inception_v3 (random weights), 20 labels", "machine": machine_info(device), "runs": runs}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=None, help="default: the paper preset's attack batch size")
    args = ap.parse_args(argv)
    res = run(resolve_device(args.device), steps=args.steps, batch=args.batch)
    if not res.get("skipped"):
        write_json(project_root() / "benchmarks" / "results" / "gpu_paper.json", res)
    return res


if __name__ == "__main__":
    main()
