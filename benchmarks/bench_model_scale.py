"""Throughput as the model grows: ML-CW, Rank I and Rank II against the model's forward+backward on
larger architectures than the default preset's, measured as :func:`benchmarks.run_all.bench_throughput`
measures the default (step by step, each attack step paired with one baseline step on as many images).

What it tests: whether the work an attack step adds to the model's forward+backward (the change of variables,
the float64 distortion, Adam, the loss on the logits and the selection of the best iterate) grows with the
model. If it grows with the batch and the image only, not with the layers, the ratio rises toward 1 as the
model's step gets dearer; if it grew with the model, the ratio would stay where it is on the default
preset's small CNN. ``extra_ms`` (the median over steps of an attack step's time minus its paired baseline
step's) is kept in the JSON; on a model whose step takes a second it is far below this machine's noise.
Speed does not depend on the weights, so each architecture is randomly initialised and attacked on random
images (``benchmarks.load_workload(synthetic=True)``).

    python -m benchmarks.run_all            # runs it as the section "throughput as the model grows"
"""
from __future__ import annotations

from dataclasses import replace

import torch

from benchmarks import SEARCH_ATTACKS, load_workload
from mlnb.presets import get_preset

KEYS = ("ratio", "step_ratio_quartiles", "extra_ms")  # what a row keeps of an attack's throughput


def row(backbone: str, image_size: int, batch: int, thr: dict) -> dict:
    """One row of the section from :func:`benchmarks.run_all.bench_throughput`'s result ``thr``."""
    return {"backbone": backbone, "image_size": image_size, "batch": batch,
            "baseline_ms_per_step": batch / thr["ml_cw"]["baseline_image_steps_per_s"] * 1e3,
            "attacks": {name: {k: thr[name][k] for k in KEYS} for name in SEARCH_ATTACKS}}


def run(cfg, models: tuple, steps: int, repeats: int, device: torch.device, log=print) -> dict:
    """``models``: ``(backbone, image_size, batch)`` triples. Returns ``{"models": [row, ...]}``, one row per
    triple with the model's baseline milliseconds per step and, per attack, its ratio, the quartiles of its
    step ratios and ``extra_ms``."""
    from benchmarks.run_all import bench_throughput

    sub = replace(cfg, steps=steps, repeats=repeats)
    rows = []
    for backbone, size, batch in models:
        preset = replace(get_preset(cfg.preset), backbone=backbone, image_size=size, pretrained=False)
        wl = load_workload(preset, batch, device, synthetic=True)
        log(f"  {backbone} at {size} px, batch {batch}")
        thr = bench_throughput(wl, sub, device, log, names=SEARCH_ATTACKS)
        rows.append({**row(backbone, size, batch, thr), "workload": wl.description})
        del wl
    return {"steps": steps, "repeats": repeats, "models": rows}


def markdown(section: dict, default_row: dict) -> list[str]:
    """The summary's lines: the default preset's row (from the main throughput section) and one per model."""
    lines = ["| model | px | batch | fwd+bwd ms / step | " + " | ".join(f"{a} ratio (step quartiles)" for a in SEARCH_ATTACKS)
             + " |", "|---|---|---|---|" + "---|" * len(SEARCH_ATTACKS)]
    for r in [default_row, *section["models"]]:
        cells = [f"**{r['attacks'][a]['ratio']:.2f}** ({_span(r['attacks'][a]['step_ratio_quartiles'])})"
                 for a in SEARCH_ATTACKS]
        lines.append(f"| {r['backbone']} | {r['image_size']} | {r['batch']} | {r['baseline_ms_per_step']:.1f} | "
                     + " | ".join(cells) + " |")
    return lines


def sentence(section: dict, low: list, goal: float) -> str:
    """What the section says about the attacks in ``low`` (below ``goal`` on the default preset), or ``""``."""
    if not section["models"]:
        return ""
    first, last = section["default_row"], section["models"][-1]
    met = all(last["attacks"][a]["ratio"] >= goal for a in low if a in SEARCH_ATTACKS)
    return (f" On {first['backbone']} the attacks add "
            + " / ".join(f"{first['attacks'][a]['extra_ms']:.1f}" for a in SEARCH_ATTACKS)
            + f" ms ({', '.join(SEARCH_ATTACKS)}) to the model's {first['baseline_ms_per_step']:.0f} ms step. "
            f"On {last['backbone']} ({last['image_size']} px, batch {last['batch']}, "
            f"{last['baseline_ms_per_step']:.0f} ms per step) the ratios are "
            + " / ".join(f"{last['attacks'][a]['ratio']:.2f}" for a in SEARCH_ATTACKS)
            + (": there the work around the model is a small part of a step, and the goal is met" if met else
               ": not all of them reach the goal on the larger model either")
            + ' (section "Throughput as the model grows").')


def _span(q: list) -> str:
    return " - ".join(f"{v:.2f}" for v in q) or "n/a"
