"""mlnb's benchmark suite (issue 7): ``python -m benchmarks.run_all [--preset default|smoke]``.

Shared helpers of the benchmark modules: the workload (a preset's target model and a batch of
attack targets), a synchronised timer, medians and a switch that turns off the early abort of the
λ runs (so that a fixed-batch throughput measurement runs exactly the steps it asks for).
See benchmarks/README.md.
"""
from __future__ import annotations

import math
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from mlnb.attacks import _driver
from mlnb.labels import STRATEGIES, make_target


@dataclass
class Workload:
    """A target model in eval mode and ``n`` attack targets on ``device``."""

    model: torch.nn.Module
    x: torch.Tensor  # (n, C, H, W) in [0, 1]
    y: torch.Tensor  # (n, L) bool
    A: torch.Tensor  # (n, L) bool, flip
    B: torch.Tensor  # (n, L) bool, keep
    description: str

    def rows(self, sl) -> tuple:
        return self.x[sl], self.y[sl], self.A[sl], self.B[sl]


def sync(device: torch.device) -> None:
    """Wait for queued device work (CUDA kernels run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device):
    """``(seconds, fn())`` with the device synchronised before and after."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def median(values) -> float:
    return float(statistics.median(values))


SEARCH_ATTACKS = ("ml_cw", "rank1", "rank2")  # the attacks with an early abort


def no_early_abort(name: str, params: dict) -> dict:
    """``params`` for attack ``name`` with every λ run taking all ``max_iter`` steps (``early_abort=False``
    for ML-CW, Rank I and Rank II): a fixed number of steps to time."""
    return {**params, "early_abort": False} if name in SEARCH_ATTACKS else dict(params)


def finite_positive(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


@contextmanager
def fixed_budget():
    """Keep finished images in the active batch of :func:`mlnb.attacks._driver.optimize` until the whole
    batch is done (``shrink=False``): same per-image results, every image computed every step."""
    saved = _driver.SHRINK
    _driver.SHRINK = False
    try:
        yield
    finally:
        _driver.SHRINK = saved


def load_model(preset, device: torch.device, synthetic: bool) -> torch.nn.Module:
    """The preset's trained target model, or (``synthetic``) a randomly initialised one of the same
    architecture: throughput does not depend on the weights; attack results do."""
    if synthetic:
        from mlnb.models import build_model

        torch.manual_seed(0)
        return build_model(preset.backbone, 10, pretrained=False, image_size=preset.image_size).to(device).eval()
    from mlnb.training import get_target_model

    model, _ = get_target_model(preset, device=device, progress=False)
    return model.eval()


def load_workload(preset, n: int, device: torch.device, *, synthetic: bool = False,
                  strategies: tuple[str, ...] = ("random",), seed: int = 0) -> Workload:
    """``n`` test images of the preset's main data set (or random images when ``synthetic``) with
    targets cycling through ``strategies`` image by image (``("hide_single", "random", "extreme")``
    makes a mixed-difficulty batch). Only images eligible for every strategy are used."""
    model = load_model(preset, device, synthetic)
    gen = torch.Generator().manual_seed(seed)
    if synthetic:
        m = 4 * n
        x = torch.rand(m, 3, preset.image_size, preset.image_size, generator=gen)
        y = torch.rand(m, 10, generator=gen) < 0.3
    else:
        from mlnb.data import load_dataset

        ds = load_dataset(preset.datasets[0], "test", preset.n_test, image_size=preset.image_size)
        x, y = ds.tensors()
    targets = [make_target(s, y, generator=gen) if s in ("random", "hide_single") else STRATEGIES[s](y)
               for s in strategies]
    eligible = torch.stack([t.eligible for t in targets]).all(0)
    idx = eligible.nonzero().flatten()[:n]
    if idx.numel() < n:
        raise ValueError(f"only {idx.numel()} eligible images for a batch of {n}: lower the batch size")
    pick = torch.arange(n) % len(strategies)
    A = torch.stack([targets[int(k)].A[i] for k, i in zip(pick, idx)])
    B = torch.stack([targets[int(k)].B[i] for k, i in zip(pick, idx)])
    desc = (f"{n} {'random' if synthetic else preset.datasets[0]} images at {preset.image_size} px, "
            f"{preset.backbone}{' (random weights)' if synthetic else ''}, targets: {'/'.join(strategies)}")
    return Workload(model, x[idx].to(device), y[idx].to(device), A.to(device), B.to(device), desc)
