"""Run mlnb's whole benchmark suite and write ``benchmarks/results/*.json`` and ``summary.md``.

    python -m benchmarks.run_all [--preset default|smoke] [--device auto]

Sections (each figure is stored with the machine it was taken on):

1. throughput: per iterative attack, attack image-steps/s over the model's plain forward+backward
   image-steps/s at the same batch (ceiling 1.0), step by step (each attack step is followed by one
   baseline step, :class:`StepClock`), median of repeats, on a fixed batch (one λ run of ``steps``
   iterations, early abort off), plus a profile of where an attack step's time goes (kernels per step
   and CPU time by source function);
2. speed-up of the batched kernel over attacking the images one at a time (same work);
3. shrinking (:mod:`benchmarks.bench_shrinking`); 4. peak memory (:mod:`benchmarks.bench_memory`);
5. throughput as the model grows (:mod:`benchmarks.bench_model_scale`: the same ratios on larger
   architectures); 6. the paper preset's cost on a GPU (:mod:`benchmarks.bench_gpu_paper`; skipped without CUDA).
"""
from __future__ import annotations

import argparse
import math
import re
import statistics
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from benchmarks import Workload, finite_positive, load_workload, median, no_early_abort, sync, timed
from benchmarks import bench_model_scale, driver_floor
from benchmarks.attack_throughput import ITERATIVE
from benchmarks.machine import describe, load_average, machine_info
from mlnb import attacks
from mlnb.attacks._core import Runtime
from mlnb.attacks import _driver, deepfool
from mlnb.attacks.deepfool import jacobian_rows
from mlnb.presets import get_preset
from mlnb.utils import atomic_write_text, project_root, resolve_device, write_json

GOAL = 0.9


@dataclass(frozen=True)
class BenchConfig:
    """Sizes of one benchmark run; ``preset`` names the mlnb preset (model, image size, budgets)."""

    preset: str
    batch: int | None  # images per attack call in the throughput section (None: the preset's attack_batch_size)
    steps: int  # Adam steps per timed call (search attacks)
    dp_steps: int  # greedy steps per timed ML-DP call
    repeats: int  # repeats, the median is reported
    n_single: int  # images attacked one at a time for the speed-up
    profile_steps: int  # steps under torch.profiler
    shrink_batch: int  # mixed-difficulty batch of the shrinking section
    shrink_params: tuple  # (n_search, max_iter) of the shrinking section
    shrink_repeats: int
    memory_steps: int
    scale_models: tuple  # (backbone, image_size, batch) of the section "throughput as the model grows"
    scale_steps: int
    scale_repeats: int


CONFIGS = {
    "default": BenchConfig("default", batch=None, steps=20, dp_steps=4, repeats=7, n_single=3, profile_steps=2,
                           shrink_batch=24, shrink_params=(4, 60), shrink_repeats=5, memory_steps=2,
                           scale_models=(("resnet18", 64, 16), ("inception_v3", 299, 4)), scale_steps=6,
                           scale_repeats=3),
    "smoke": BenchConfig("smoke", batch=4, steps=3, dp_steps=2, repeats=1, n_single=1, profile_steps=1,
                         shrink_batch=4, shrink_params=(2, 3), shrink_repeats=1, memory_steps=1,
                         scale_models=(("resnet18", 32, 2),), scale_steps=2, scale_repeats=1),
}


def steady_params(name: str, steps: int, dp_steps: int) -> dict:
    """One λ run of exactly ``steps`` iterations (with :func:`no_early_abort`); ML-DP: ``dp_steps``."""
    if name == "ml_dp":
        return {"max_iter": dp_steps}
    return {"lambda_init": 10.0, "n_search": 1, "max_iter": steps, "check_every": steps}


def _k(name: str, cfg: BenchConfig) -> int:
    return steady_params(name, cfg.steps, cfg.dp_steps)["max_iter"]


def fwd_bwd(model, x: torch.Tensor) -> None:
    """One plain forward + backward w.r.t. the input: the physical limit of a gradient attack step."""
    xg = x.detach().requires_grad_(True)
    torch.autograd.grad(model(xg).sum(), xg)


def dp_cols(A: torch.Tensor, B: torch.Tensor) -> list[int]:
    return (A | B).any(0).nonzero().flatten().tolist()


def run_attack(name: str, wl: Workload, sl, params: dict):
    """One call of attack ``name`` (or of the driver alone, :data:`driver_floor.NAME`) on rows ``sl``."""
    x, y, A, B = wl.rows(sl)
    if name == driver_floor.NAME:
        return driver_floor.run(wl.model, x, y, A, B, **params)
    return attacks.ATTACKS[name](wl.model, x, y, A, B, progress=False, **no_early_abort(name, params))


class StepClock:
    """A progress bar for :func:`mlnb.attacks._core.progress_bar` that times every step of an attack and,
    right after each, one step of the baseline on as many images (``baseline(k)``): each attack step is
    compared with a baseline step taken milliseconds later, so that the load of a shared machine, which
    drifts within seconds, changes both alike. ``attack``, ``base``: seconds per step; ``images``: the
    images of each step; ``in_baseline``: all the seconds spent in the baseline."""

    def __init__(self, total: int, baseline) -> None:
        self.total, self.n, self.baseline = total, 0, baseline
        self.attack, self.base, self.images, self.in_baseline = [], [], [], 0.0
        self._last = 0.0

    def __enter__(self):
        self._last = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, k: int) -> None:
        if k <= 0:
            return
        now = time.perf_counter()
        self.n += k
        self.baseline(k)
        done = time.perf_counter()
        self.attack.append(now - self._last)
        self.base.append(done - now)
        self.images.append(k)
        self.in_baseline += done - now
        self._last = time.perf_counter()


@contextmanager
def step_clock(baseline):
    """Within the block every attack call reports to a fresh :class:`StepClock` (appended to the list
    this yields) instead of its tqdm bar."""
    clocks = []

    def make(total, progress, desc):
        clocks.append(StepClock(total, baseline))
        return clocks[-1]

    saved = _driver.progress_bar, deepfool.progress_bar
    _driver.progress_bar = deepfool.progress_bar = make
    try:
        yield clocks
    finally:
        _driver.progress_bar, deepfool.progress_bar = saved


def bench_throughput(wl: Workload, cfg: BenchConfig, device: torch.device, log, names=ITERATIVE) -> dict:
    """Attack vs plain forward+backward image-steps/s at one batch, step by step, median of repeats.

    Every attack step is followed by one baseline step on as many images (:class:`StepClock`): ML-CW and
    Rank I/II against a plain forward+backward w.r.t. the input, ML-DP against its greedy step's Jacobian
    (one forward, one backward per label of A ∪ B). A repeat's ratio is its baseline time over its attack
    time, summed over the steps after the first; ``ratio_per_call`` also charges the call's fixed cost
    (validation, the clean and final forwards) to the steps; ``extra_ms`` is the median over steps of an attack
    step's time minus its paired baseline step's: what the attack adds to the model per step."""
    n, all_rows = wl.x.shape[0], slice(None)
    rt = Runtime(wl.model)
    cols = dp_cols(wl.A, wl.B)
    base_fns = {"ml_dp": lambda k: jacobian_rows(rt, wl.x[:k], cols)}
    for _ in range(2):  # warm-up (allocator, oneDNN primitive cache)
        fwd_bwd(wl.model, wl.x)
    for name in names:
        run_attack(name, wl, all_rows, steady_params(name, 2, 1))
    raw = defaultdict(lambda: defaultdict(list))
    for r in range(cfg.repeats):
        for name in names:
            params = {**steady_params(name, cfg.steps, cfg.dp_steps), **({} if name == "ml_dp" else {"check_every": 1})}
            base_fn = base_fns.get(name, lambda k: fwd_bwd(wl.model, wl.x[:k]))
            with step_clock(lambda k: (base_fn(k), sync(device))) as clocks:
                t, res = timed(lambda: run_attack(name, wl, all_rows, params), device)
            (c,) = clocks
            # not steps: the first interval (the call's set-up) and ML-DP's last (its final evaluation)
            keep = slice(1, -1 if name == "ml_dp" else None)
            attack, base, images = sum(c.attack[keep]), sum(c.base[keep]), sum(c.images[keep])
            d, nan = raw[name], float("nan")
            if not images:  # every image finished in its first step (ML-DP): no step to time
                attack = base = images = nan
            d["ratio"].append(base / attack)
            d["per_call"].append(float(res.iterations.sum()) / (t - c.in_baseline) / (images / base))
            d["step_ratios"].extend(b / a for b, a in zip(c.base[keep], c.attack[keep]))
            d["extra_s"].extend(a - b for b, a in zip(c.base[keep], c.attack[keep]))
            d["attack_rate"].append(images / attack)
            d["base_rate"].append(images / base)
            d["attack_s"].append(t - c.in_baseline)
        log(f"  throughput repeat {r + 1}/{cfg.repeats} (ratio): " + "  ".join(
            f"{a} {raw[a]['ratio'][-1]:.2f}" for a in names))
    out = {}
    for name in names:
        d = {k: [v for v in vs if math.isfinite(v)] for k, vs in raw[name].items()}
        out[name] = {"ratio": _median(d["ratio"]), "ratio_per_call": _median(d["per_call"]),
                     "ratio_repeats": raw[name]["ratio"],
                     "ratio_quartiles": _quartiles(d["ratio"]), "step_ratio_quartiles": _quartiles(d["step_ratios"]),
                     "extra_ms": _median(d["extra_s"]) * 1e3,
                     "attack_image_steps_per_s": _median(d["attack_rate"]),
                     "baseline_image_steps_per_s": _median(d["base_rate"]),
                     "baseline": ("forward + one backward per label of A ∪ B (%d labels)" % len(cols)
                                  if name == "ml_dp" else "forward + backward w.r.t. the input"),
                     "batch": n, "steps_per_call": _k(name, cfg), "attack_seconds": d["attack_s"]}
    return out


def _median(values: list) -> float:
    return median(values) if values else float("nan")


def _quartiles(values: list) -> list:
    """First and third quartile of the values (their spread), empty for fewer than 4."""
    if len(values) < 4:
        return []
    q = statistics.quantiles(sorted(values), n=4)
    return [q[0], q[2]]


def bench_speedup(wl: Workload, cfg: BenchConfig, device: torch.device, batched_seconds: dict) -> dict:
    """Batched call on the whole batch vs one call per image (same parameters, so the same work per
    image); the one-at-a-time time is measured on ``n_single`` images and scaled to the batch."""
    n, k = wl.x.shape[0], min(cfg.n_single, wl.x.shape[0])
    out = {}
    for name in ITERATIVE:
        params = steady_params(name, cfg.steps, cfg.dp_steps)
        t, _ = timed(lambda: [run_attack(name, wl, slice(i, i + 1), params) for i in range(k)], device)
        single = t / k * n
        batched = median(batched_seconds[name])
        out[name] = {"speedup": single / batched, "one_at_a_time_s_per_image": t / k,
                     "batched_s_per_image": batched / n, "batch": n, "n_single": k}
    return out


_FRAME = re.compile(r"(mlnb/[\w/]+\.py)\(\d+\): (\w+)")


def _group(event) -> str:
    """Source of a top-level op: ``backward: <autograd node>``, or the innermost mlnb function."""
    q, node = event.cpu_parent, None
    while q is not None:
        if q.name.startswith("autograd::engine::evaluate_function: "):
            node = q.name.split(": ", 1)[1]
        m = _FRAME.search(q.name)
        if m and node is None:
            return "model forward" if m.group(1) == "mlnb/models.py" else f"{m.group(1)}: {m.group(2)}"
        if m and node is not None:
            return f"backward: {node}"
        q = q.cpu_parent
    return f"backward: {node}" if node else "other"


def _profile_groups(fn) -> dict:
    """``{group: [top-level kernels, self CPU ms]}`` of one call of ``fn`` (see :func:`_group`)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], with_stack=True) as prof:
        fn()
    groups = defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if not e.name.startswith("aten::"):
            continue
        q, top = e.cpu_parent, True
        while q is not None:
            if q.name.startswith("aten::"):
                top = False
                break
            q = q.cpu_parent
        g = _group(e)
        groups[g][0] += int(top)
        groups[g][1] += e.self_cpu_time_total / 1e3
    return groups


def profile_step(make_fn, k1: int, k2: int) -> dict:
    """Kernels (top-level aten ops) and self CPU time per step, grouped by source, as the difference
    between a run of ``k2`` and one of ``k1`` steps (so a call's fixed setup cancels out). The CPU
    times carry the profiler's own overhead: compare them with each other, not with wall times."""
    a, b = _profile_groups(make_fn(k1)), _profile_groups(make_fn(k2))
    rows = {}
    for g in set(a) | set(b):
        c = (b.get(g, [0, 0.0])[0] - a.get(g, [0, 0.0])[0]) / (k2 - k1)
        ms = (b.get(g, [0, 0.0])[1] - a.get(g, [0, 0.0])[1]) / (k2 - k1)
        if c > 0:
            rows[g] = {"kernels_per_step": c, "ms_per_step": max(ms, 0.0)}
    return {"kernels_per_step": sum(r["kernels_per_step"] for r in rows.values()),
            "ms_per_step": sum(r["ms_per_step"] for r in rows.values()),
            "groups": dict(sorted(rows.items(), key=lambda kv: -kv[1]["ms_per_step"]))}


def bench_profile(wl: Workload, cfg: BenchConfig) -> dict:
    """Where a step goes: the plain forward+backward against ML-CW and Rank II steps (difference of
    a ``profile_steps + 1`` and a 1-step call)."""
    k1, k2 = 1, cfg.profile_steps + 1
    out = {"baseline": profile_step(lambda k: lambda: [fwd_bwd(wl.model, wl.x) for _ in range(k)], k1, k2)}
    for name in ("ml_cw", "rank2"):
        out[name] = profile_step(lambda k: lambda: run_attack(name, wl, slice(None), steady_params(name, k, 1)),
                                 k1, k2)
    return out


def _fmt(v: float, digits: int = 2) -> str:
    return f"{v:.{digits}f}"


def summary_markdown(res: dict) -> str:
    m, cfg = res["machine"], res["config"]
    lines = [f"# mlnb benchmark summary ({res['preset']} preset)", "",
             f"Machine: {describe(m)}; load average before/after: {m['loadavg']} / {res['loadavg_after']}. "
             f"Total {res['seconds']:.0f} s. Reproduce: `python -m benchmarks.run_all --preset {res['preset']}`.", "",
             "## Attack throughput over the model's forward+backward (ceiling 1.0, goal >= 0.9)", "",
             f"{res['workload']}; batch {cfg['batch']}, one λ run of {cfg['steps']} steps (ML-DP: "
             f"{cfg['dp_steps']} greedy steps), early abort off. Every attack step is followed by one baseline step "
             "on as many images, so that both are timed within milliseconds of each other; a repeat's ratio is the "
             "baseline's time over the attack's, summed over its steps after the first; median and quartiles of "
             f"{cfg['repeats']} repeats. The last ratio also charges the call's fixed cost (validation, the clean "
             "and final forwards) to its steps.", "",
             "| attack | attack img-steps/s | fwd+bwd img-steps/s | ratio | quartiles | ratio per call "
             "| batched vs one at a time |", "|---|---|---|---|---|---|---|"]
    for name, r in res["throughput"].items():
        sp = res["speedup"][name]["speedup"]
        q = r.get("ratio_quartiles") or []
        lines.append(f"| {name} | {_fmt(r['attack_image_steps_per_s'], 1)} | {_fmt(r['baseline_image_steps_per_s'], 1)} "
                     f"| **{_fmt(r['ratio'])}** | {' - '.join(_fmt(v) for v in q) or 'n/a'} "
                     f"| {_fmt(r['ratio_per_call'])} | {_fmt(sp, 1)}x |")
    lines += ["", "ML-DP's baseline is one forward plus one backward per label of A ∪ B (its greedy step's "
              "Jacobian), so its ratio is comparable to the others; images leave its batch as they succeed."]
    floor = res.get("driver_floor")
    if floor:
        q = " - ".join(_fmt(v) for v in floor.get("ratio_quartiles") or []) or "n/a"
        losses = ", ".join(f"{k} {_fmt(ms)}" for k, ms in floor["loss_ms"].items())
        lines += ["", f"**The driver alone**, the steps ML-CW, Rank I and Rank II share (change of variables, "
                  f"forward, backward, float64 distortion, selection, Adam) with a loss that costs nothing "
                  f"(`benchmarks/driver_floor.py`), timed the same way: ratio **{_fmt(floor['ratio'])}** (quartiles "
                  f"{q}): it adds {_fmt(floor['driver_ms'])} ms to the model's {_fmt(floor['base_ms'], 1)} ms step, which "
                  f"leaves {_fmt(floor['room_ms'])} ms per step for a loss before the ratio drops under {GOAL}. What "
                  f"each attack's loss adds to the driver's step (ms, from the median ratios): {losses}."]
    prof = res["profile"]
    lines += ["", "### Where a step's time goes (torch.profiler, CPU)", "",
              "| | kernels / step | CPU ms / step |", "|---|---|---|"]
    for k in ("baseline", "ml_cw", "rank2"):
        lines.append(f"| {k} | {_fmt(prof[k]['kernels_per_step'], 0)} | {_fmt(prof[k]['ms_per_step'], 1)} |")
    lines += ["", "Largest groups of ML-CW's step (kernels, ms):", ""]
    for g, r in list(prof["ml_cw"]["groups"].items())[:8]:
        lines.append(f"- {g}: {_fmt(r['kernels_per_step'], 0)} kernels, {_fmt(r['ms_per_step'], 1)} ms")
    if res.get("bounds"):
        lines += ["", "What bounds a ratio below the goal: " + res["bounds"]]
    scale = res.get("model_scale")
    if scale:
        lines += ["", "## Throughput as the model grows", "",
                  "The ratios of the first table (its first row) and the same measurement on larger architectures "
                  f"(random weights, random images, {scale['steps']} steps, median of {scale['repeats']} repeats). "
                  "In brackets: the quartiles of the ratios of single steps (each attack step over its paired "
                  "baseline step), the spread this machine puts on them.", ""]
        lines += bench_model_scale.markdown(scale, scale["default_row"])
    sh = res["shrinking"]
    lines += ["", "## Early abort + batch shrinking vs a fixed budget", "", sh["workload"], "",
              "| attack | shrinking s | fixed-budget s | speed-up | image-forwards computed (shrink / fixed) | "
              "success (shrink / fixed) | identical per-image results |", "|---|---|---|---|---|---|---|"]
    for name, r in sh["attacks"].items():
        lines.append(f"| {name} | {_fmt(r['shrink_s'], 1)} | {_fmt(r['fixed_s'], 1)} | {_fmt(r['speedup'])}x | "
                     f"{r['image_steps_shrink']} / {r['image_steps_fixed']} | {_fmt(r['success_shrink'])} / "
                     f"{_fmt(r['success_fixed'])} | {r['identical']} |")
    mem = res["memory"]
    lines += ["", f"## Peak memory ({mem['method']})", "", f"batch {mem['batch']}, {mem['steps']} steps.", "",
              "| run | peak MiB | per image MiB | over fwd+bwd |", "|---|---|---|---|"]
    for name, r in mem["runs"].items():
        lines.append(f"| {name} | {_fmt(r['peak_mib'], 1)} | {_fmt(r['per_image_mib'], 3)} | "
                     f"{_fmt(r['over_fwd_bwd'])} |")
    gpu = res["gpu_paper"]
    lines += ["", "## Paper preset on a GPU (Inception-v3, 299 px, 10 x 1000 steps)", ""]
    if gpu.get("skipped"):
        lines.append(f"Skipped: {gpu['skipped']} Run `python -m benchmarks.bench_gpu_paper` on a CUDA machine.")
    else:
        lines += [f"GPU: {gpu['machine'].get('gpu')}; batch {gpu['batch']}; extrapolated from {gpu['steps']} "
                  "measured steps, no early abort (an upper bound).", "",
                  "| attack | bf16 | channels-last | s per 1000 images |", "|---|---|---|---|"]
        for r in gpu["runs"]:
            lines.append(f"| {r['attack']} | {r['bf16']} | {r['channels_last']} | {_fmt(r['s_per_1000_images'], 0)} |")
    return "\n".join(lines) + "\n"


def explain_bounds(res: dict) -> str:
    """A sentence on what bounds the ratios below :data:`GOAL`, from the profile."""
    low = [k for k, r in res["throughput"].items() if r["ratio"] < GOAL]
    if not low:
        return ""
    scale = res.get("model_scale")
    grown = bench_model_scale.sentence(scale, low, GOAL) if scale else ""
    prof = res["profile"]
    base, cw, r2 = prof["baseline"], prof["ml_cw"], prof["rank2"]
    extra = [(g, r) for g, r in cw["groups"].items() if g != "model forward" and not g.startswith("backward: ")]
    top = ", ".join(f"{g} ({r['kernels_per_step']:.0f} kernels, {r['ms_per_step']:.1f} ms)" for g, r in extra[:4])
    return (f"{', '.join(low)} below {GOAL}. A plain forward+backward launches {base['kernels_per_step']:.0f} "
            f"kernels per step, an ML-CW step {cw['kernels_per_step']:.0f} and a Rank II step "
            f"{r2['kernels_per_step']:.0f}: the extra ones are the image-sized passes the algorithm needs (the "
            "change of variables, the float64 distortion, Adam) and the float64 loss arithmetic on (N, L) tensors "
            f"(largest groups of ML-CW: {top}).{_floor_sentence(res)}{grown}")


def _floor_sentence(res: dict) -> str:
    floor = res.get("driver_floor")
    if not floor:
        return ""
    losses = ", ".join(f"{k} {ms:.2f} ms" for k, ms in floor["loss_ms"].items())
    return (f" The driver alone, with a loss that costs nothing, reaches {floor['ratio']:.2f}: on this model and "
            f"machine it leaves {floor['room_ms']:.2f} ms per step for a loss before the ratio drops under {GOAL}, "
            f"where the exact losses take {losses}.")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description="mlnb benchmark suite: writes benchmarks/results/")
    ap.add_argument("--preset", default="default", choices=sorted(CONFIGS))
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    ap.add_argument("--synthetic", action="store_true",
                    help="random images and a randomly initialised model (no data set or training needed)")
    ap.add_argument("--skip-gpu", action="store_true", help="skip the paper-preset GPU section")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    t_start = time.perf_counter()
    cfg = CONFIGS[args.preset]
    device = resolve_device(args.device)
    out_dir = Path(args.out) if args.out else project_root() / "benchmarks" / "results"
    preset = get_preset(cfg.preset)
    machine = machine_info(device)
    log(f"mlnb benchmarks, {args.preset} preset on {describe(machine)}; load {machine['loadavg']}")
    cfg = replace(cfg, batch=cfg.batch or preset.attack_batch_size)
    wl = load_workload(preset, cfg.batch, device, synthetic=args.synthetic)
    sections = {}

    def section(title, fn):
        log(f"{title} ...")
        t0 = time.perf_counter()
        out = fn()
        sections[title] = time.perf_counter() - t0
        return out

    from benchmarks import bench_gpu_paper, bench_memory, bench_shrinking

    names = ITERATIVE + (driver_floor.NAME,)  # the driver alone is timed beside the attacks, then set apart
    thr = section("throughput", lambda: bench_throughput(wl, cfg, device, log, names=names))
    floor = thr.pop(driver_floor.NAME)
    base_ms = floor["batch"] / floor["baseline_image_steps_per_s"] * 1e3  # the model's step beside the driver's
    floor.update(base_ms=base_ms, driver_ms=driver_floor.step_ms(base_ms, floor["ratio"]) - base_ms,
                 room_ms=driver_floor.room_ms(base_ms, floor["ratio"], GOAL),
                 loss_ms={k: driver_floor.step_ms(base_ms, r["ratio"]) - driver_floor.step_ms(base_ms, floor["ratio"])
                          for k, r in thr.items() if k != "ml_dp"})
    spd = section("speed-up over one image at a time", lambda: bench_speedup(
        wl, cfg, device, {k: v["attack_seconds"] for k, v in thr.items()}))
    prof = section("profile", lambda: bench_profile(wl, cfg))
    scale = section("throughput as the model grows", lambda: bench_model_scale.run(
        cfg, cfg.scale_models, cfg.scale_steps, cfg.scale_repeats, device, log=log))
    scale["default_row"] = bench_model_scale.row(preset.backbone, preset.image_size, cfg.batch, thr)
    shr = section("shrinking vs fixed budget", lambda: bench_shrinking.run(
        preset, cfg.shrink_batch, cfg.shrink_params, cfg.shrink_repeats, device, synthetic=args.synthetic, log=log))
    mem = section("peak memory", lambda: bench_memory.run(cfg.preset, cfg.batch, cfg.memory_steps, device,
                                                          synthetic=args.synthetic))
    gpu = ({"skipped": "--skip-gpu was given."} if args.skip_gpu else
           section("paper preset on the GPU", lambda: bench_gpu_paper.run(device, log=log)))
    sync(device)
    res = {"preset": args.preset, "config": asdict(cfg), "machine": machine, "workload": wl.description,
           "throughput": thr, "driver_floor": floor, "speedup": spd, "profile": prof, "model_scale": scale,
           "shrinking": shr, "memory": mem,
           "gpu_paper": gpu, "goal": GOAL, "loadavg_after": load_average(), "section_seconds": sections,
           "seconds": time.perf_counter() - t_start}
    res["bounds"] = explain_bounds(res)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / f"bench_{args.preset}.json", res)
    if not gpu.get("skipped"):
        write_json(out_dir / "gpu_paper.json", gpu)
    atomic_write_text(out_dir / ("summary.md" if args.preset == "default" else f"summary_{args.preset}.md"),
                      summary_markdown(res))
    log(summary_markdown(res))
    assert all(finite_positive(r["ratio"]) for r in thr.values())
    return res


if __name__ == "__main__":
    main()
