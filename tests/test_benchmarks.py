"""Smoke test of the benchmark suite: ``python -m benchmarks.run_all --preset smoke`` runs end to end and
writes well-formed JSON and a Markdown summary. No wall-clock number is asserted, only structure and
that the ratios are positive and finite (random images and a randomly initialised model: no data set
or training needed)."""
from __future__ import annotations

import json
import math
import os

import pytest

from mlnb.utils import project_root

pytestmark = pytest.mark.unit

ITERATIVE = ("ml_cw", "ml_dp", "rank1", "rank2")


def _positive_finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def test_benchmark_suite_smoke(tmp_path, monkeypatch):
    # in-process (the peak-memory section still starts its own small processes), tiny sizes
    root = project_root()
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("PYTHONPATH", str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    from benchmarks import run_all

    run_all.main(["--preset", "smoke", "--device", "cpu", "--synthetic", "--quiet", "--skip-gpu", "--out", str(tmp_path)])
    res = json.loads((tmp_path / "bench_smoke.json").read_text())
    assert res["preset"] == "smoke"
    for key in ("cpu_model", "torch_threads", "torch", "loadavg"):
        assert key in res["machine"]
    for name in ITERATIVE:
        r = res["throughput"][name]
        assert _positive_finite(r["ratio"]) and _positive_finite(r["ratio_per_call"])
        assert len(r["ratio_repeats"]) == res["config"]["repeats"]
        assert _positive_finite(res["speedup"][name]["speedup"])
    floor = res["driver_floor"]  # the driver with a free loss, timed beside the attacks
    assert _positive_finite(floor["ratio"]) and math.isfinite(floor["room_ms"])
    assert len(floor["ratio_repeats"]) == res["config"]["repeats"] and "driver alone" not in res["throughput"]
    for name in ("baseline", "ml_cw", "rank2"):
        assert res["profile"][name]["kernels_per_step"] > 0
    for name, r in res["shrinking"]["attacks"].items():
        assert r["identical"] is True, name  # shrinking never changes a per-image result
        assert r["success_shrink"] == r["success_fixed"]
        assert r["image_steps_shrink"] <= r["image_steps_fixed"]
        assert _positive_finite(r["speedup"])
    assert set(res["memory"]["runs"]) == {"fwd_bwd", "ml_cw", "rank2", "ml_dp"}
    assert all(r["peak_bytes"] >= 0 for r in res["memory"]["runs"].values())
    scale = res["model_scale"]
    assert [r["backbone"] for r in scale["models"]] == [m[0] for m in res["config"]["scale_models"]]
    for row in [scale["default_row"], *scale["models"]]:
        assert _positive_finite(row["baseline_ms_per_step"])
        assert set(row["attacks"]) == {"ml_cw", "rank1", "rank2"}
        assert all(_positive_finite(r["ratio"]) and math.isfinite(r["extra_ms"]) for r in row["attacks"].values())
    assert "skipped" in res["gpu_paper"] or res["gpu_paper"]["runs"]
    summary = (tmp_path / "summary_smoke.md").read_text()
    for name in ITERATIVE:
        assert f"| {name} |" in summary
    assert "Machine:" in summary and "**The driver alone**" in summary
    assert "## Throughput as the model grows" in summary and "| resnet18 |" in summary


def test_step_clock_pairs_every_attack_step_with_one_baseline_step(monkeypatch):
    # the throughput section's clock: one update per attack step (check_every=1), each followed by exactly one
    # baseline call on as many images; the first interval is the call's set-up (not a step)
    import torch

    root = project_root()
    monkeypatch.syspath_prepend(str(root))
    from benchmarks import run_all
    from mlnb import attacks
    from mlnb.attacks import _driver

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5)).eval()
    x = torch.rand(6, 3, 8, 8)
    y = torch.zeros(6, 5, dtype=torch.bool)
    y[:, 0] = True
    A = torch.zeros_like(y)
    A[:, 1] = True
    B = ~A
    calls = []
    saved = _driver.progress_bar
    with run_all.step_clock(calls.append) as clocks:
        attacks.ml_cw(model, x, y, A, B, progress=False, lambda_init=1.0, n_search=1, max_iter=4, check_every=1,
                      early_abort=False)
    assert _driver.progress_bar is saved  # restored
    (clock,) = clocks
    assert len(clock.images) == 4 and calls == clock.images and len(clock.attack) == len(clock.base) == 4
    assert all(k == clock.images[0] for k in clock.images) and 1 <= clock.images[0] <= 6
    assert all(t > 0 for t in clock.attack) and all(t >= 0 for t in clock.base)
