"""The state of the optimisation driver (:mod:`mlnb.attacks._driver`), named as the algorithm names it:
the change of variables, an :class:`Iterate` with its selection keys and the rule that compares two,
the per-image :class:`SearchState`, and the optional trace of every step.

Private to :mod:`mlnb.attacks`. Introduced in notebooks/03_ml_cw.ipynb.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..metrics import tau_b_from_parts
from ..target import Target

_KEYS = {"constraints": ("n_met",), "tau": ("tau",), "constraints_tau": ("n_met", "tau")}
TRACE_FIELDS = ("image", "iteration", "run", "lam", "loss", "distortion", "hinge", "n_met")


def to_w(x: torch.Tensor, tanh_eps: float) -> torch.Tensor:
    """CW change of variables: ``w = atanh((2x - 1)(1 - tanh_eps))`` so that pixels at exactly 0 or 1
    map to a finite ``w``; the inverse is :func:`from_w`."""
    return torch.atanh((2 * x - 1) * (1 - tanh_eps))


def from_w(w: torch.Tensor) -> torch.Tensor:
    """``x = (tanh(w) + 1) / 2``, always in ``[0, 1]``."""
    return (torch.tanh(w) + 1) / 2


def state_block(x: torch.Tensor, init: tuple, k: int) -> tuple:
    """Image-sized tensors shaped like ``x``, the first filled from ``init`` (tensors or numbers), then ``k``
    uninitialised ones, and the ``(n, C*H*W)`` float64 squares of the distortion, all views of one
    allocation: the driver's per-image state of a call lives in one region of the allocator instead of a
    dozen tensors among the model's activations (scattered, they make glibc's heap grow, trim and fault its
    pages in again every few steps; one region is reused step after step and call after call)."""
    n, size, j = x.shape[0], x[0].numel(), len(init) + k
    cut = n * size * 8  # the float64 part first: the rest starts 8-byte aligned for any image dtype
    buf = torch.empty(cut + j * x.numel() * x.element_size(), dtype=torch.uint8, device=x.device)
    views = buf[cut:].view(x.dtype).view(j, *x.shape).unbind(0)
    for t, value in zip(views, init):
        if isinstance(value, torch.Tensor):
            t.copy_(value)
        else:
            t.fill_(value)
    return views, buf[:cut].view(torch.float64).view(n, size)


def step_constants(max_iter: int, betas: tuple, window: int, like: torch.Tensor) -> tuple:
    """The driver's per-step constants, indexed by k (steps already taken in the current λ run): Adam's
    decay factors (0 on a run's first step: m = v = 0 at a restart) and bias corrections for step k + 1
    as ``(max_iter + 1, 4, 1, ...)`` (one gather per step gives the four per-image columns of images
    shaped like ``like``), and whether step k + 1 is an early-abort check (every ``window`` steps)."""
    (b1, b2), dev = betas, like.device
    ks = torch.arange(max_iter + 1, device=dev)
    bc1 = (1 - b1 ** (ks + 1).double()).float()
    bc2 = (1 - b2 ** (ks + 1).double()).float()
    dec1 = torch.where(ks == 0, 0.0, torch.tensor(b1, dtype=torch.float32, device=dev))
    dec2 = torch.where(ks == 0, 0.0, torch.tensor(b2, dtype=torch.float32, device=dev))
    table = torch.stack([dec1, dec2, bc1, bc2], 1).view(max_iter + 1, 4, *([1] * (like.dim() - 1)))
    return table, (ks + 1) % window == 0


def _tau(logits: torch.Tensor, parts: dict) -> torch.Tensor:
    """Kendall tau-b as a selection key (:func:`mlnb.metrics.tau_b_from_parts` on the criterion's parts made
    once per target): an undefined tau (NaN) ranks below every defined one (-2)."""
    return tau_b_from_parts(logits, parts).nan_to_num_(nan=-2.0)


@dataclass
class Iterate:
    """An example per image and the keys it is selected by: ``x`` ``(n, C, H, W)``, ``n_met`` ``(n,)``
    constraints met, ``tau`` ``(n,)`` Kendall tau-b (-2 where undefined), ``dist`` ``(n,)`` float64
    squared L2 distortion."""

    x: torch.Tensor
    n_met: torch.Tensor
    tau: torch.Tensor
    dist: torch.Tensor


def better(rule: str, new: Iterate, old: Iterate) -> torch.Tensor:
    """``(n,)`` bool: ``new`` strictly better than ``old`` under ``rule`` (larger is better):
    ``constraints`` = (n_met, -distortion), ``tau`` = (tau_b, -distortion),
    ``constraints_tau`` = (n_met, tau_b, -distortion), compared lexicographically."""
    out = new.dist < old.dist
    for key in reversed(_KEYS[rule]):
        a, b = getattr(new, key), getattr(old, key)
        out = (a > b) | ((a == b) & out)
    return out


@dataclass
class SearchState:
    """The per-image state of the search, one row per active image (every field has ``n`` rows)."""

    rows: torch.Tensor  # (n,) positions of these images in the caller's batch
    target: Target  # their target (y, A, B)
    x0: torch.Tensor  # (n, C, H, W) clean images
    w0: torch.Tensor  # their change of variables, where every λ run restarts
    w: torch.Tensor  # Adam's variable: x + r = (tanh(w) + 1) / 2
    m: torch.Tensor  # Adam's first moment (2x its value: see optimize)
    v: torch.Tensor  # Adam's second moment (4x its value)
    step: torch.Tensor  # (n,) steps taken in the current λ run
    run: torch.Tensor  # (n,) λ runs finished
    lam: torch.Tensor  # (n,) float64 λ of the current run
    lower: torch.Tensor  # (n,) float64 largest λ of a failed run (0: none yet)
    upper: torch.Tensor  # (n,) float64 smallest λ of a successful run (inf: none yet)
    prev_loss: torch.Tensor  # (n,) float64 loss at the last early-abort check of this run
    prev_progress: torch.Tensor  # (n,) float64 progress measure at that check
    iterations: torch.Tensor  # (n,) steps taken in all runs
    run_ok: torch.Tensor  # (n,) bool: the current run has reached its goal
    n_runs_ok: torch.Tensor  # (n,) successful runs
    run_best: Iterate  # best iterate of the current λ run
    best: Iterate  # best example so far (the clean image at first)
    best_lam: torch.Tensor  # (n,) float64 λ of the run that found `best` (NaN: the clean image)
    extra: dict  # per-image tensors an attack's loss reads (e.g. ranking masks), n rows each
    tau_parts: dict | None = None  # the criterion's parts of Kendall's tau (metrics.tau_b_parts) when a rule reads tau


def trace_row(S: SearchState, live, loss, dist, h, n_met) -> dict:
    """One step of the trace for the live rows: CPU tensors of :data:`TRACE_FIELDS`."""
    rows = live.nonzero().flatten()
    cols = (S.rows, S.iterations + 1, S.run, S.lam, loss, dist, h, n_met)
    return {k: v.index_select(0, rows).cpu() for k, v in zip(TRACE_FIELDS, cols)}


def collect_trace(trace: list) -> dict:
    """The recorded steps as one long table: ``{field: (T,) tensor}`` for :data:`TRACE_FIELDS`
    (``image`` the row in the attack's batch, ``iteration`` its step count over all runs, ``run`` the
    λ run, ``lam``, ``loss = distortion + λ hinge``, ``distortion = ||r||²``, ``hinge``, ``n_met``)."""
    if not trace:
        return {k: torch.zeros(0) for k in TRACE_FIELDS}
    return {k: torch.cat([row[k] for row in trace]) for k in TRACE_FIELDS}
