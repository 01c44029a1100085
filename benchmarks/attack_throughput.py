"""Attack throughput against the model's own forward+backward throughput (issue 4 / issue 7).

For each iterative attack on a preset's target model this prints

* ``ratio``: attack image-steps per second / plain forward+backward (w.r.t. the input) image-steps
  per second at the same batch size (ceiling 1.0); ML-DP is reported per greedy step, each of which
  costs one backward per label, so its ratio is naturally below 1 / |A ∪ B| of a gradient step;
* ``speedup``: the batched kernel against attacking ``n_single`` images one at a time.

Run: ``python benchmarks/attack_throughput.py --preset smoke`` (seconds) or ``--preset default``.
Writes ``benchmarks/results/attack_throughput.json`` (atomic) with the machine it ran on.
"""
from __future__ import annotations

import argparse
import platform
import time

import torch

from mlnb import attacks
from mlnb.data import load_dataset
from mlnb.labels import random_case
from mlnb.presets import get_preset
from mlnb.training import get_target_model
from mlnb.utils import environment_info, project_root, write_json

ITERATIVE = ("ml_cw", "rank1", "rank2", "ml_dp")


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work before reading the clock (kernels run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fwd_bwd_rate(model, x, repeats: int) -> float:
    """Image-steps per second of ``grad_x sum(model(x))``."""
    def once():
        xg = x.detach().requires_grad_(True)
        torch.autograd.grad(model(xg).sum(), xg)
    once()
    sync(x.device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        once()
    sync(x.device)
    return repeats * x.shape[0] / (time.perf_counter() - t0)


def attack_rate(name, model, x, y, A, B, params) -> tuple[float, float, object]:
    sync(x.device)
    t0 = time.perf_counter()
    res = attacks.ATTACKS[name](model, x, y, A, B, progress=False, **params)
    sync(x.device)
    dt = time.perf_counter() - t0
    return float(res.iterations.sum()) / dt, dt, res


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--n-images", type=int, default=None, help="images per batch (default: preset)")
    ap.add_argument("--n-single", type=int, default=4, help="images attacked one at a time for the speed-up")
    ap.add_argument("--attacks", default=",".join(ITERATIVE))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = get_preset(args.preset)
    device = torch.device(args.device)
    model, _ = get_target_model(preset, device=device, progress=False)
    n = args.n_images or min(preset.attack_batch_size, preset.n_general)
    ds = load_dataset(preset.datasets[0], "test", preset.n_test, image_size=preset.image_size)
    x, y = ds.tensors()
    target = random_case(y, torch.Generator().manual_seed(0))
    idx = target.eligible.nonzero().flatten()[:n]
    x, y, A, B = (t[idx].to(device) for t in (x, y, target.A, target.B))
    base = fwd_bwd_rate(model, x, repeats=5)
    rows = {}
    for name in args.attacks.split(","):
        params = preset.attack_params(name)
        rate, dt, res = attack_rate(name, model, x, y, A, B, params)
        k = min(args.n_single, x.shape[0])
        sync(device)
        t0 = time.perf_counter()
        for i in range(k):
            attacks.ATTACKS[name](model, x[i:i + 1], y[i:i + 1], A[i:i + 1], B[i:i + 1], progress=False, **params)
        sync(device)
        single_per_image = (time.perf_counter() - t0) / k
        rows[name] = {"image_steps_per_s": rate, "ratio": rate / base, "seconds": dt,
                      "speedup_vs_one_at_a_time": single_per_image * x.shape[0] / dt,
                      "success": float(res.success.float().mean()), "params": params}
        print(f"{name:6s} ratio {rate / base:5.2f}  speed-up {rows[name]['speedup_vs_one_at_a_time']:6.1f}x  "
              f"{dt:6.1f}s  success {rows[name]['success']:.2f}", flush=True)
    out = {"preset": args.preset, "n_images": int(x.shape[0]), "fwd_bwd_image_steps_per_s": base,
           "attacks": rows, "machine": {**environment_info(device), "cpu_model": cpu_model()}}
    write_json(project_root() / "benchmarks" / "results" / "attack_throughput.json", out)
    return out


if __name__ == "__main__":
    main()
