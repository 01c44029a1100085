"""Peak memory of an attack call against the plain forward+backward at the same batch.

Each run executes in a fresh Python process, so earlier runs' freed memory cannot hide its peak.

* CUDA: ``torch.cuda.max_memory_allocated`` above what was allocated before the run.
* CPU: peak resident set size (RSS, sampled every millisecond from ``/proc/self/statm``) above the
  RSS before the run, with glibc's mmap threshold fixed at 64 KiB (``MALLOC_MMAP_THRESHOLD_``) so
  that freed tensors go back to the system at once and the RSS follows the live tensors. (tracemalloc
  does not see torch's allocations.)

Run alone: ``python -m benchmarks.bench_memory --preset smoke --batch 8``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import torch

from benchmarks import load_workload, no_early_abort
from mlnb import attacks
from mlnb.presets import get_preset
from mlnb.utils import project_root, resolve_device

RUNS = ("fwd_bwd", "ml_cw", "rank2", "ml_dp")
MIB = 2 ** 20


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssPeak:
    """Samples the RSS in a background thread while the ``with`` block runs."""

    def __enter__(self):
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


def measure(run: str, preset: str, batch: int, steps: int, device: torch.device, synthetic: bool) -> dict:
    """Peak bytes above the starting point of one run (in this process)."""
    wl = load_workload(get_preset(preset), batch, device, synthetic=synthetic)

    def body():
        if run == "fwd_bwd":
            for _ in range(steps):
                xg = wl.x.detach().requires_grad_(True)
                torch.autograd.grad(wl.model(xg).sum(), xg)
            return
        params = ({"max_iter": steps} if run == "ml_dp" else
                  {"lambda_init": 10.0, "n_search": 1, "max_iter": steps, "check_every": steps})
        attacks.ATTACKS[run](wl.model, wl.x, wl.y, wl.A, wl.B, progress=False, **no_early_abort(run, params))

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        body()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        with RssPeak() as r:
            body()
        peak = r.peak - r.base
    return {"peak_bytes": int(peak), "input_bytes": int(wl.x.numel() * wl.x.element_size())}


def run(preset: str, batch: int, steps: int, device: torch.device, *, synthetic: bool = False) -> dict:
    """Every run of :data:`RUNS` in its own process; returns the JSON section."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": str(project_root()) + os.pathsep
           + os.environ.get("PYTHONPATH", "")}
    procs, runs = {}, {}
    # CPU: the runs are independent processes and are started together (each measures its own RSS);
    # CUDA: one at a time, so that they do not share the device's memory
    for name in RUNS:
        cmd = [sys.executable, "-m", "benchmarks.bench_memory", "--child", name, "--preset", preset,
               "--batch", str(batch), "--steps", str(steps), "--device", str(device)]
        if synthetic:
            cmd.append("--synthetic")
        procs[name] = subprocess.Popen(cmd, cwd=project_root(), env=env, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
        if device.type == "cuda":
            procs[name].wait()
    for name, p in procs.items():
        stdout, stderr = p.communicate()
        if p.returncode:
            raise RuntimeError(f"memory run {name} failed:\n{stderr[-2000:]}")
        runs[name] = json.loads(stdout.strip().splitlines()[-1])
    base = max(runs["fwd_bwd"]["peak_bytes"], 1)
    for r in runs.values():
        r.update(peak_mib=r["peak_bytes"] / MIB, per_image_mib=r["peak_bytes"] / MIB / batch,
                 over_fwd_bwd=r["peak_bytes"] / base)
    method = ("torch.cuda.max_memory_allocated" if device.type == "cuda"
              else "peak RSS above the start, sampled every ms, fresh process per run")
    return {"method": method, "batch": batch, "steps": steps, "device": str(device), "runs": runs}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child", choices=RUNS, default=None)
    ap.add_argument("--preset", default="smoke")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--synthetic", action="store_true")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    if args.child:
        print(json.dumps(measure(args.child, args.preset, args.batch, args.steps, device, args.synthetic)))
    else:
        print(json.dumps(run(args.preset, args.batch, args.steps, device, synthetic=args.synthetic), indent=2))


if __name__ == "__main__":
    main()
