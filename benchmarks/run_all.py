"""Run mlnb's whole benchmark suite and write ``benchmarks/results/*.json`` and ``summary.md``.

    python -m benchmarks.run_all [--preset default|smoke] [--device auto]

Sections (each figure is stored with the machine it was taken on):

1. throughput: per iterative attack, attack image-steps/s over the model's plain forward+backward
   image-steps/s at the same batch (ceiling 1.0), measured in one process, interleaved, median of
   repeats, on a fixed batch (one λ run of ``steps`` iterations, early abort off), plus a profile of
   where an attack step's time goes (kernels per step and CPU time by source function);
2. speed-up of the batched kernel over attacking the images one at a time (same work);
3. shrinking (:mod:`benchmarks.bench_shrinking`); 4. peak memory (:mod:`benchmarks.bench_memory`);
5. the paper preset's cost on a GPU (:mod:`benchmarks.bench_gpu_paper`; skipped without CUDA).
"""
from __future__ import annotations

import argparse
import re
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from benchmarks import (Workload, finite_positive, load_workload, median, no_early_abort, sync, timed)
from benchmarks.attack_throughput import ITERATIVE
from benchmarks.machine import describe, load_average, machine_info
from mlnb import attacks
from mlnb.attacks._core import Runtime
from mlnb.attacks.deepfool import jacobian_rows
from mlnb.presets import get_preset
from mlnb.utils import atomic_write_text, project_root, resolve_device, write_json

SEARCH_ATTACKS = ("ml_cw", "rank1", "rank2")
GOAL = 0.9


@dataclass(frozen=True)
class BenchConfig:
    """Sizes of one benchmark run; ``preset`` names the mlnb preset (model, image size, budgets)."""

    preset: str
    batch: int | None  # images per attack call in the throughput section (None: the preset's attack_batch_size)
    steps: int  # Adam steps per timed call (search attacks)
    dp_steps: int  # greedy steps per timed ML-DP call
    repeats: int  # interleaved repeats, the median is reported
    n_single: int  # images attacked one at a time for the speed-up
    profile_steps: int  # steps under torch.profiler
    shrink_batch: int  # mixed-difficulty batch of the shrinking section
    shrink_params: tuple  # (n_search, max_iter) of the shrinking section
    shrink_repeats: int
    memory_steps: int


CONFIGS = {
    "default": BenchConfig("default", batch=None, steps=20, dp_steps=2, repeats=5, n_single=3, profile_steps=2,
                           shrink_batch=24, shrink_params=(4, 60), shrink_repeats=1, memory_steps=2),
    "smoke": BenchConfig("smoke", batch=4, steps=2, dp_steps=1, repeats=1, n_single=1, profile_steps=1,
                         shrink_batch=4, shrink_params=(2, 3), shrink_repeats=1, memory_steps=1),
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


def forward_only(model, x: torch.Tensor) -> None:
    with torch.no_grad():
        model(x)


def dp_cols(A: torch.Tensor, B: torch.Tensor) -> list[int]:
    return (A | B).any(0).nonzero().flatten().tolist()


def run_attack(name: str, wl: Workload, sl, params: dict):
    x, y, A, B = wl.rows(sl)
    return attacks.ATTACKS[name](wl.model, x, y, A, B, progress=False, **no_early_abort(name, params))


def bench_throughput(wl: Workload, cfg: BenchConfig, device: torch.device, log) -> dict:
    """Attack vs plain forward+backward image-steps/s at one batch, interleaved, median of repeats."""
    n, all_rows = wl.x.shape[0], slice(None)
    rt = Runtime(wl.model)
    cols = dp_cols(wl.A, wl.B)
    for _ in range(2):  # warm-up (allocator, oneDNN primitive cache)
        fwd_bwd(wl.model, wl.x)
    run_attack("ml_cw", wl, slice(0, 2), steady_params("ml_cw", 2, 1))
    raw = defaultdict(lambda: defaultdict(list))
    for r in range(cfg.repeats):
        for name in ITERATIVE:
            params = steady_params(name, cfg.steps, cfg.dp_steps)
            k = params["max_iter"]
            if name == "ml_dp":  # ceiling of a greedy step: one forward + one backward per label of A ∪ B
                base, _ = timed(lambda: [jacobian_rows(rt, wl.x, cols) for _ in range(k)], device)
            else:
                base, _ = timed(lambda: [fwd_bwd(wl.model, wl.x) for _ in range(k)], device)
            fwd, _ = timed(lambda: forward_only(wl.model, wl.x), device)
            t, res = timed(lambda: run_attack(name, wl, all_rows, params), device)
            for key, v in (("base_s", base), ("attack_s", t), ("forward_s", fwd),
                           ("image_steps", float(res.iterations.sum()))):
                raw[name][key].append(v)
        log(f"  throughput repeat {r + 1}/{cfg.repeats} (ratio per call): " + "  ".join(
            f"{a} {raw[a]['image_steps'][-1] / raw[a]['attack_s'][-1] / (n * _k(a, cfg) / raw[a]['base_s'][-1]):.2f}"
            for a in ITERATIVE))
    out = {}
    for name in ITERATIVE:
        d = raw[name]
        k = steady_params(name, cfg.steps, cfg.dp_steps)["max_iter"]
        # the call's own bookkeeping forwards (clean scores, final scores) are not attack steps: subtract
        # two forwards (median over all repeats), never more than a quarter of the call
        fwd = median([f for a in ITERATIVE for f in raw[a]["forward_s"]])
        loop = [max(t - 2 * fwd, 0.75 * t) for t in d["attack_s"]]
        per_step = [s / lt / (n * k / b) for s, lt, b in zip(d["image_steps"], loop, d["base_s"])]
        per_call = [s / t / (n * k / b) for s, t, b in zip(d["image_steps"], d["attack_s"], d["base_s"])]
        out[name] = {"ratio": median(per_step), "ratio_per_call": median(per_call), "ratio_repeats": per_step,
                     "attack_image_steps_per_s": median([s / lt for s, lt in zip(d["image_steps"], loop)]),
                     "baseline_image_steps_per_s": median([n * k / b for b in d["base_s"]]),
                     "baseline": ("forward + one backward per label of A ∪ B (%d labels)" % len(cols)
                                  if name == "ml_dp" else "forward + backward w.r.t. the input"),
                     "batch": n, "steps_per_call": k, "attack_seconds": d["attack_s"], "baseline_seconds": d["base_s"],
                     "forward_seconds": d["forward_s"]}
    return out


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
             f"{cfg['dp_steps']} greedy steps), early abort off, median of {cfg['repeats']} interleaved repeats.", "",
             "| attack | attack img-steps/s | fwd+bwd img-steps/s | ratio | ratio incl. call setup | batched vs one at a time |",
             "|---|---|---|---|---|---|"]
    for name, r in res["throughput"].items():
        sp = res["speedup"][name]["speedup"]
        lines.append(f"| {name} | {_fmt(r['attack_image_steps_per_s'], 1)} | {_fmt(r['baseline_image_steps_per_s'], 1)} "
                     f"| **{_fmt(r['ratio'])}** | {_fmt(r['ratio_per_call'])} | {_fmt(sp, 1)}x |")
    lines += ["", "ML-DP's baseline is one forward plus one backward per label of A ∪ B (its greedy step's "
              "Jacobian), so its ratio is comparable to the others; images leave its batch as they succeed."]
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
    prof = res["profile"]
    base, cw = prof["baseline"], prof["ml_cw"]
    extra = [(g, r) for g, r in cw["groups"].items() if g != "model forward"
             and not g.startswith("backward: ") or g in ("backward: TanhBackward0", "backward: PowBackward0",
                                                          "backward: SubBackward0", "backward: MulBackward0")]
    top = ", ".join(f"{g} ({r['kernels_per_step']:.0f} kernels, {r['ms_per_step']:.1f} ms)" for g, r in extra[:4])
    return (f"{', '.join(low)} below {GOAL}. A plain forward+backward launches {base['kernels_per_step']:.0f} "
            f"kernels per step, an ML-CW step {cw['kernels_per_step']:.0f}: the extra ones are image-sized "
            f"element-wise passes outside the model (largest: {top}). On a small CNN each such pass costs "
            "a fixed share of a step, and on a busy CPU each parallel kernel also waits for its OpenMP "
            "threads, so the ratio is bounded by the number of image-sized kernels of the loop.")


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

    thr = section("throughput", lambda: bench_throughput(wl, cfg, device, log))
    spd = section("speed-up over one image at a time", lambda: bench_speedup(
        wl, cfg, device, {k: v["attack_seconds"] for k, v in thr.items()}))
    prof = section("profile", lambda: bench_profile(wl, cfg))
    shr = section("shrinking vs fixed budget", lambda: bench_shrinking.run(
        preset, cfg.shrink_batch, cfg.shrink_params, cfg.shrink_repeats, device, synthetic=args.synthetic, log=log))
    mem = section("peak memory", lambda: bench_memory.run(cfg.preset, cfg.batch, cfg.memory_steps, device,
                                                          synthetic=args.synthetic))
    gpu = ({"skipped": "--skip-gpu was given."} if args.skip_gpu else
           section("paper preset on the GPU", lambda: bench_gpu_paper.run(device, log=log)))
    sync(device)
    res = {"preset": args.preset, "config": asdict(cfg), "machine": machine, "workload": wl.description,
           "throughput": thr, "speedup": spd, "profile": prof, "shrinking": shr, "memory": mem,
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
